"""A dataset stage's manifest is built from typed shard reports and turned into its StageResult once."""

from __future__ import annotations

import pytest

from rayalign.data.shards import summarise
from rayalign.results import Manifest, ShardReport


def reports() -> list[ShardReport]:
    return [
        ShardReport(shard="shard-00000", in_=10, ok=8, quarantined=2, out_rows=3, reasons={"wrong_type": 2},
                    stats={"tokens": 40.0, "slots": 48.0}),
        ShardReport(shard="shard-00001", in_=5, ok=4, quarantined=1, out_rows=2,
                    reasons={"wrong_type": 1}, stats={"tokens": 20.0}),
    ]  # fmt: skip


def test_summarise_totals_reports_and_to_result_carries_them(tmp_path):
    m = summarise("prepare", reports(), "h1", {"kind": "chat"})
    assert (m.counts.in_, m.counts.ok, m.counts.quarantined, m.counts.out_rows) == (15, 12, 3, 5)
    assert m.counts.by_reason == {"wrong_type": 3} and m.stats == {"tokens": 60.0, "slots": 48.0}
    on_disk = m.to_json()
    assert on_disk["kind"] == "chat" and on_disk["shards"][1]["in"] == 5  # the `in` key readers use
    assert Manifest.from_json(on_disk) == m

    r = m.to_result(str(tmp_path / "out"), {"packing_efficiency": 0.5}, model="tiny")
    assert r.stage == "prepare" and r.output == str(tmp_path / "out") and r.counts == m.counts
    assert r.metrics == {"tokens": 60.0, "slots": 48.0, "packing_efficiency": 0.5}
    assert r.details == {"manifest": str(tmp_path / "out" / "manifest.json"), "shards": 2, "model": "tiny"}
    r.counts.ok = 0  # the result's counts are its own
    assert m.counts.ok == 12


def test_reports_that_do_not_reconcile_fail_the_stage():
    bad = [*reports(), ShardReport(shard="shard-00002", in_=3, ok=3, quarantined=1, out_rows=3)]
    with pytest.raises(RuntimeError, match="in=18 ok=15 quarantined=4"):
        summarise("prepare", bad, "h1")
