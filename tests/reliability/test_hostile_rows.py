"""No input row can crash a dataset stage: ≥1,000 hostile rows per kind through `prepare` and `sample`.

Every row is accounted for: in = ok + quarantined for every shard and in total, `in` equals the
rows of the file, and every quarantined row carries a reason and a detail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayalign.data.prepare import PrepareConfig, run_prepare
from reliability.hostile import count_rows, hostile_jsonl, hostile_lines

KINDS = ("corpus", "chat", "prompts", "pairs")


def check_accounting(out: Path, n_rows: int) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    for s in m["shards"]:
        assert s["in"] == s["ok"] + s["quarantined"], s
        assert sum(s["reasons"].values()) == s["quarantined"], s
    c = m["counts"]
    assert c["in"] == n_rows == c["ok"] + c["quarantined"]
    assert c["in"] == sum(s["in"] for s in m["shards"])
    q = pq.read_table(out / "quarantine").to_pylist() if (out / "quarantine").exists() else []
    assert len(q) == c["quarantined"]
    assert all(r["reason"] and r["detail"] for r in q)
    return m


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_prepare_survives_hostile_rows(kind, tmp_path):
    data = hostile_jsonl(kind, 1000, seed=KINDS.index(kind))
    src = tmp_path / f"{kind}.jsonl"
    src.write_bytes(data)
    n = count_rows(data)
    assert n >= 1000
    result = run_prepare(
        PrepareConfig(
            kind=kind,
            inputs=[str(src)],
            output=str(tmp_path / "out"),
            model="tiny-random:llama",
            max_length=256,
            seq_len=512,
            pool={"workers": 0, "shard_rows": 64},
        ),
        log=lambda s: None,
    )
    m = check_accounting(tmp_path / "out", n)
    reasons = m["counts"]["by_reason"]
    # the hostile cases arrive as their own reasons, not as one catch-all
    for code in (
        "unparseable_json",
        "invalid_utf8",
        "too_deep",
        "non_finite_number",
        "duplicate_key",
        "invalid_unicode",
        "truncated_line",
        "not_an_object",
    ):
        assert reasons.get(code, 0) >= 1, (code, reasons)
    assert result.counts.ok >= 100  # the valid rows (and the BOM-prefixed first row) made it through
    q = pq.read_table(tmp_path / "out" / "quarantine").to_pylist()
    truncated = [r for r in q if r["reason"] == "truncated_line"]
    assert len(truncated) == 1 and truncated[0]["index"] == len(data) - len(data.rsplit(b"\n", 1)[1])


@pytest.mark.timeout(120)
def test_sample_stage_survives_hostile_prompts(tmp_path):
    from rayalign.generate.sample import SampleConfig, run_sample

    data = hostile_jsonl("prompts", 1000, seed=7)
    src = tmp_path / "prompts.jsonl"
    src.write_bytes(data)
    cfg = SampleConfig(
        inputs=[str(src)],
        output=str(tmp_path / "sample"),
        model="tiny-random:llama",
        engine={"backend": "hf", "batch_size": 64, "max_model_len": 512},
        params={"max_tokens": 2, "n": 1, "temperature": 0.0},
        pool={"workers": 0, "shard_rows": 128},
    )
    run_sample(cfg, log=lambda s: None)
    m = check_accounting(tmp_path / "sample", count_rows(data))
    assert m["counts"]["out_rows"] == m["counts"]["ok"]  # n=1: one sample per accepted prompt


@pytest.mark.timeout(120)
def test_prepare_survives_hostile_json_array(tmp_path):
    """The same rows as one JSON document: a bad element is quarantined alone, never the whole file."""
    elements = []
    for line in hostile_lines("chat", 1000, seed=3):
        try:
            json.loads(line.decode("utf-8"))  # Python's own parser is lenient (NaN, duplicate keys) ...
        except (ValueError, RecursionError):
            continue  # ... and what it refuses cannot sit inside a valid document
        elements.append(line)
    src = tmp_path / "chat.json"
    src.write_bytes(b"\xef\xbb\xbf[" + b",\r\n".join(elements) + b"]")
    run_prepare(
        PrepareConfig(
            kind="chat",
            inputs=[str(src)],
            output=str(tmp_path / "out"),
            model="tiny-random:llama",
            max_length=256,
            seq_len=512,
            pool={"workers": 0},
        ),
        log=lambda s: None,
    )
    m = check_accounting(tmp_path / "out", len(elements))
    assert len(elements) >= 900 and m["counts"]["ok"] >= 100
    for code in ("non_finite_number", "duplicate_key", "invalid_unicode"):
        assert m["counts"]["by_reason"].get(code, 0) >= 1, code
