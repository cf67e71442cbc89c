"""Every bad-row kind is quarantined with its reason, nothing is lost, counts reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.schemas import validate_row

DATA = Path(__file__).resolve().parents[2] / "rayjobs" / "data"


@pytest.mark.parametrize(
    "kind,raw,code",
    [
        ("corpus", {"id": "a"}, "missing_field"),
        ("corpus", {"text": None}, "null_value"),
        ("corpus", {"text": 3}, "wrong_type"),
        ("corpus", {"text": "  \n"}, "empty_text"),
        ("corpus", ["x"], "not_an_object"),
        ("chat", {"messages": [{"role": "robot", "content": "x"}]}, "unknown_role"),
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "no_assistant_turn"),
        ("chat", {"messages": [{"role": "user"}]}, "missing_field"),
        ("chat", {"messages": "hi"}, "wrong_type"),
        (
            "prompts",
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "no_user_turn",
        ),
        ("pairs", {"prompt": "q", "chosen": "same ", "rejected": "same"}, "chosen_equals_rejected"),
        ("pairs", {"prompt": "q", "chosen": "a"}, "missing_field"),
        ("pairs", {"prompt": "q", "chosen": "a", "rejected": None}, "null_value"),
        ("pairs", {"id": True, "prompt": "q", "chosen": "a", "rejected": "b"}, "wrong_type"),
        ("pairs", {"prompt": "q", "chosen": "a", "rejected": "b", "chosen_open": "yes"}, "wrong_type"),
    ],
)
def test_reason_codes(kind, raw, code):
    row, reason = validate_row(kind, raw, default_id="x")
    assert row is None
    assert reason.code == code
    assert reason.detail  # a human sentence naming the field


def test_good_rows_are_normalised():
    row, reason = validate_row("prompts", {"prompt": "Hi there", "meta": {"b": 1, "a": 2}}, default_id="f-3")
    assert reason is None
    assert row == {"id": "f-3", "messages": [{"role": "user", "content": "Hi there"}], "meta": '{"a": 2, "b": 1}'}
    row, _ = validate_row(
        "pairs", {"id": 7, "prompt": "q", "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}
    )
    assert row["id"] == "7" and row["chosen"] == "A" and row["prompt"] == [{"role": "user", "content": "q"}]
    assert "chosen_open" not in row and "rejected_open" not in row
    flags = {"chosen_open": True, "rejected_open": None}
    row, _ = validate_row("pairs", {"prompt": "q", "chosen": "A cut", "rejected": "B", **flags})
    assert (row["chosen_open"], "rejected_open" in row) == (True, False)


# every bundled file carries one row of each of these; the kinds add their own
COMMON = ("unparseable_json", "invalid_utf8", "not_an_object", "missing_field", "null_value", "wrong_type")
EXPECTED = {
    kind: dict.fromkeys(COMMON + extra, 1)
    for kind, extra in {
        "corpus": ("empty_text",),
        "chat": ("unknown_role", "no_assistant_turn", "empty_text", "over_length"),
        "prompts": ("empty_text",),
        "pairs": ("chosen_equals_rejected",),
    }.items()
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_bundled_data_quarantine_reconciles(kind, tmp_path):
    src = DATA / f"{kind}.jsonl"
    n_lines = sum(1 for ln in src.read_bytes().split(b"\n") if ln.strip())
    cfg = PrepareConfig(
        kind=kind,
        inputs=[str(src)],
        output=str(tmp_path / kind),
        model="tiny-random:llama",
        max_length=256,
        seq_len=512,
        pool={"workers": 0, "shard_rows": 50},
    )
    c = run_prepare(cfg, log=lambda s: None).counts
    assert c.in_ == n_lines == c.ok + c.quarantined
    assert c.by_reason == EXPECTED[kind]
    q = pq.read_table(tmp_path / kind / "quarantine").to_pylist()
    assert len(q) == c.quarantined
    assert {r["reason"] for r in q} == set(EXPECTED[kind])
    assert all(r["raw"] and r["detail"] and r["source"] for r in q)
    bad_json = next(r for r in q if r["reason"] == "unparseable_json")
    assert "unterminated" in bad_json["raw"]  # the raw row is kept, not lost
    utf8 = next(r for r in q if r["reason"] == "invalid_utf8")
    assert "caf" in utf8["raw"] and "not valid UTF-8" in utf8["detail"]


def test_overlength_truncate_policy(tmp_path):
    src = tmp_path / "c.jsonl"
    long = {
        "id": "long",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 300}],
    }
    short = {"id": "short", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    src.write_text("\n".join(json.dumps(r) for r in (long, short)) + "\n")
    base = dict(
        kind="chat", inputs=[str(src)], model="tiny-random:llama", max_length=64, seq_len=128, pool={"workers": 0}
    )
    m = run_prepare(PrepareConfig(output=str(tmp_path / "q"), overlength="quarantine", **base), log=lambda s: None)
    assert m.counts.by_reason == {"over_length": 1}
    m = run_prepare(PrepareConfig(output=str(tmp_path / "t"), overlength="truncate", **base), log=lambda s: None)
    assert m.counts.quarantined == 0 and m.metrics["truncated"] == 1
    rows = pq.read_table(tmp_path / "t" / "data").to_pylist()
    assert sorted(n for r in rows for n in r["seq_lens"])[-1] == 64
