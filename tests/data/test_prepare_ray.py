"""`prepare` on a real local Ray cluster: same output as in-process, resumes after a crash, skips when done."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayalign.data.prepare import PrepareConfig, PrepareProcessor, run_prepare
from rayalign.data.shards import plan_shards, run_sharded

DATA = Path(__file__).resolve().parents[2] / "rayjobs" / "data"


def cfg(out, workers, **kw) -> PrepareConfig:
    return PrepareConfig(
        kind="corpus",
        inputs=[str(DATA / "corpus.jsonl")],
        output=str(out),
        model="tiny-random:llama",
        max_length=128,
        seq_len=256,
        pool={"workers": workers, "shard_rows": 40, "num_cpus": 0.5},
        **kw,
    )


def rows_of(out) -> list[dict]:
    return pq.read_table(Path(out) / "data").to_pylist()


@pytest.mark.timeout(180)
def test_ray_pool_matches_in_process(ray_cluster, tmp_path):
    local = run_prepare(cfg(tmp_path / "local", 0), log=lambda s: None)
    remote = run_prepare(cfg(tmp_path / "ray", 2), log=lambda s: None)
    assert remote.counts == local.counts
    assert rows_of(tmp_path / "ray") == rows_of(tmp_path / "local")
    assert 0.8 < remote.metrics["packing_efficiency"] <= 1.0
    # a finished stage with the same config is skipped
    logs = []
    again = run_prepare(cfg(tmp_path / "ray", 2), log=logs.append)
    assert any("already complete" in s for s in logs) and again.counts == remote.counts


class Crash(BaseException):
    """A job killed mid-way: not an exception of one row (those are quarantined), so nothing catches it."""


class CrashingProcessor(PrepareProcessor):
    """Fails on its third shard: a job killed mid-way."""

    calls = 0

    def process(self, rows):
        CrashingProcessor.calls += 1
        if CrashingProcessor.calls == 3:
            raise Crash()
        return super().process(rows)


def test_resume_after_crash_produces_every_row_once(tmp_path):
    c = cfg(tmp_path / "run", 0)
    with pytest.raises(Crash):
        run_sharded(
            "prepare",
            c.inputs,
            c.output,
            lambda: CrashingProcessor(c),
            kind=c.kind,
            pool=c.pool,
            config_hash=c.hash(),
            log=lambda s: None,
        )
    done_before = sorted(p.name for p in (tmp_path / "run" / "data").glob("*.parquet"))
    assert done_before == ["shard-00000.parquet", "shard-00001.parquet"]
    logs = []
    m = run_prepare(c, log=logs.append)
    n_shards = len(plan_shards(c.inputs, c.pool.shard_rows))
    assert n_shards >= 5  # ~247 rows in byte ranges of ~40 rows
    assert any(f"2 done, {n_shards - 2} to run" in s for s in logs)
    full = run_prepare(cfg(tmp_path / "clean", 0), log=lambda s: None)
    assert rows_of(tmp_path / "run") == rows_of(tmp_path / "clean")
    assert m.counts == full.counts
    ids = [d for r in rows_of(tmp_path / "run") for d in r["doc_ids"]]
    assert len(ids) == len(set(ids)) == m.counts.ok


def test_changed_config_recomputes(tmp_path):
    run_prepare(cfg(tmp_path / "o", 0), log=lambda s: None)
    logs = []
    m = run_prepare(cfg(tmp_path / "o", 0, pack=False), log=logs.append)
    assert any("config changed" in s for s in logs)
    assert all(len(r["seq_lens"]) == 1 for r in rows_of(tmp_path / "o"))
    assert m.counts.out_rows == m.counts.ok


def test_limit_takes_the_first_rows(tmp_path):
    """pool.limit=50 with shards of 40: rows 0-39 and 40-49 of the file, quarantine counted within them."""
    run_prepare(
        PrepareConfig(
            kind="corpus",
            inputs=[str(DATA / "corpus.jsonl")],
            output=str(tmp_path / "l"),
            model="tiny-random:llama",
            max_length=128,
            seq_len=256,
            pack=False,
            pool={"workers": 0, "shard_rows": 40, "limit": 50},
        ),
        log=lambda s: None,
    )
    m = json.loads((tmp_path / "l" / "manifest.json").read_text())
    # JSONL shards are byte ranges: the first 40 rows, then the next 10, ending where row 50 ends
    lines = (DATA / "corpus.jsonl").read_bytes().split(b"\n")
    ends = [sum(len(ln) + 1 for ln in lines[:k]) for k in (40, 50)]
    assert [(s["start"], s["stop"], s["in"]) for s in m["shards"]] == [(0, ends[0], 40), (ends[0], ends[1], 10)]
    assert m["counts"]["in"] == 50 == m["counts"]["ok"] + m["counts"]["quarantined"]
