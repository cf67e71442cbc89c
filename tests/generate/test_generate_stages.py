"""Every generation stage end to end on the tiny model with the hf backend (its text is random, so
these assert structure, statuses and counts), clair's rule reviser on known responses (exact
values), the Ray actor-pool path, and a stage killed mid-way then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayalign.data.schemas import validate_row
from rayalign.data.shards import finished_shards, read_dataset, read_manifest
from rayalign.stages import run_stage

TINY = {"backend": "hf", "model": "tiny-random:llama", "max_model_len": 768, "batch_size": 8}
LOWER_DONE = {"constraints": [{"kind": "lowercase"}, {"kind": "end_with", "phrase": "done"}]}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def prompts(tmp_path) -> str:
    rows = [{"id": f"p{i}", "prompt": f"Question number {i}: what is {i} plus {i}?"} for i in range(5)]
    rows.append({"id": "p5", "prompt": "Name the capital of Italy.", "meta": LOWER_DONE})
    rows.append({"id": "bad", "text": "no prompt field"})  # quarantined by validation: missing_field
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def base(out: Path, shard_rows: int = 4, **kw) -> dict:
    return {"engine": TINY, "output": str(out), "pool": {"workers": 0, "shard_rows": shard_rows}, **kw}


def statuses(result) -> dict:
    return result.details.get("status_counts", {})


@pytest.mark.timeout(300)
def test_sample_then_clair_verifier(prompts, tmp_path):
    m = run_stage(
        "sample",
        data={
            **base(tmp_path / "sample"),
            "inputs": [prompts],
            "params": {"n": 2, "max_tokens": 6, "temperature": 1.0, "seed": 1},
        },
    )
    c = m.counts.to_json()
    assert (c["in"], c["ok"], c["quarantined"], c["out_rows"]) == (7, 6, 1, 12)
    assert c["by_reason"] == {"missing_field": 1}
    rows = read_dataset(tmp_path / "sample").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"p{i}-s{k}" for i in range(6) for k in range(2))
    assert sum(statuses(m).values()) == 12 and set(statuses(m)) <= {"ok", "truncated", "empty", "engine_error"}
    assert all(r["completion_tokens"] <= 6 and r["model"] == "tiny-random:llama" for r in rows)

    m = run_stage(
        "clair",
        data={
            **base(tmp_path / "clair"),
            "inputs": [str(tmp_path / "sample" / "data")],
            "reviser": "verifier",
            "params": {"max_tokens": 8},
        },
    )
    c = m.counts.to_json()
    assert c["in"] == 12 and c["ok"] + c["quarantined"] == 12 and c["out_rows"] == c["ok"]
    pairs = read_dataset(tmp_path / "clair").to_pylist() if c["out_rows"] else []
    for p in pairs:  # usable by reference/prefer as is
        assert validate_row("pairs", p)[1] is None
        assert p["status"] in ("revised", "verified", "rule_fixed") and 0 <= p["jaccard"] <= 1
    # the constrained prompt: random text passes neither check, so the rule fix makes its pairs
    fixed = [p for p in pairs if p["id"].startswith("p5-")]
    assert len(fixed) == 2 and all(p["status"] == "rule_fixed" and p["chosen"].endswith("done") for p in fixed)
    assert sum(statuses(m).values()) == 12


def test_clair_rule_reviser_exact(tmp_path):
    """Known responses through the model-free rule reviser.

    'Rome, Italy.' under lowercase + end_with 'done' → 'rome, italy. done'; words (lower-cased)
    {rome , italy .} vs {rome , italy . done}: Jaccard 4/5 = 0.8; token edit distance 1 insertion
    over 5 tokens = 0.2.
    """
    rows = [
        {
            "id": "a",
            "messages": [{"role": "user", "content": "Capital of Italy?"}],
            "response": "Rome, Italy.",
            "meta": LOWER_DONE,
        },
        {"id": "b", "prompt": "Capital of Italy?", "response": "rome. done", "meta": LOWER_DONE},  # already passes
        {"id": "c", "prompt": "Capital of Italy?", "response": "Rome."},  # nothing checkable
        {"id": "d", "prompt": "Capital?", "response": "", "status": "engine_error", "meta": LOWER_DONE},
        {"id": "e", "prompt": "Long?", "response": "short", "meta": {"constraints": [{"kind": "min_words", "min": 9}]}},
        '{"id": "f", "prompt": broken json',
    ]
    inp = write_jsonl(tmp_path / "samples.jsonl", rows)
    m = run_stage(
        "clair", data={"inputs": [inp], "output": str(tmp_path / "out"), "reviser": "rule", "pool": {"workers": 0}}
    )
    assert m.counts.to_json()["by_reason"] == {
        "input_engine_error": 1,
        "not_checkable": 1,
        "original_passes": 1,
        "unfixable": 1,
        "unparseable_json": 1,
    }
    assert (m.counts.to_json()["in"], m.counts.to_json()["out_rows"]) == (6, 1)
    [pair] = read_dataset(tmp_path / "out").to_pylist()
    assert (pair["chosen"], pair["rejected"], pair["status"]) == ("rome, italy. done", "Rome, Italy.", "rule_fixed")
    assert pair["jaccard"] == pytest.approx(0.8) and pair["edit_distance"] == pytest.approx(0.2)
    assert m.details["contrast"] == {"mean_jaccard": pytest.approx(0.8), "mean_edit_distance": pytest.approx(0.2)}
    assert json.loads(pair["meta"]) == LOWER_DONE and pair["reviser_model"] == "rule"


@pytest.mark.timeout(300)
def test_rewrite_stage(tmp_path):
    docs = [{"id": f"d{i}", "text": f"Document {i}. Water boils at {90 + i} degrees at sea level."} for i in range(4)]
    inp = write_jsonl(tmp_path / "corpus.jsonl", [*docs, {"id": "x", "text": ""}])
    m = run_stage("rewrite", data={**base(tmp_path / "rw", shard_rows=3), "inputs": [inp], "params": {"max_tokens": 8}})
    assert (m.counts.to_json()["in"], m.counts.to_json()["out_rows"], m.counts.to_json()["by_reason"]) == (
        5,
        4,
        {"empty_text": 1},
    )
    rows = read_dataset(tmp_path / "rw").to_pylist()
    assert [r["id"] for r in rows] == ["d0", "d1", "d2", "d3"]
    assert sum(statuses(m).values()) == 4
    for r, d in zip(rows, docs):
        assert r["original"] == d["text"] and r["prompt_version"].startswith("rewrite@")
        if r["status"] in ("rewritten", "unchanged"):
            assert r["text"] == r["rewritten"] and r["messages"][-1]["role"] == "assistant"
        else:  # untrusted: the original is used and no training example is emitted
            assert r["text"] == d["text"] and r["messages"] is None
    assert validate_row("corpus", rows[0])[1] is None  # feeds pretrain as a corpus


@pytest.mark.timeout(300)
def test_pas_and_judge_stages(prompts, tmp_path):
    m = run_stage("pas", data={**base(tmp_path / "pas"), "inputs": [prompts], "params": {"max_tokens": 12}})
    assert (m.counts.to_json()["in"], m.counts.to_json()["out_rows"]) == (7, 6)
    rows = read_dataset(tmp_path / "pas").to_pylist()
    assert sum(statuses(m).values()) == 6
    for r in rows:
        if r["status"] == "accepted":
            assert r["hint"] and r["messages"][-1]["content"].endswith(r["hint"])
        else:
            assert r["hint"] == "" and r["original"] == r["messages"]
        assert r["raw_hint"] is not None

    m = run_stage(
        "judge",
        data={
            **base(tmp_path / "judge"),
            "inputs": [prompts],
            "params": {"max_tokens": 6, "temperature": 1.0, "n": 2, "seed": 0},
            "judge_params": {"max_tokens": 4},
        },
    )
    c = m.counts.to_json()
    assert c["in"] == 7 and c["ok"] + c["quarantined"] == 7 and c["out_rows"] == c["ok"]
    allowed = {"missing_field", "identical", "empty_sample", "judge_unparseable", "inconsistent", "judge_error"}
    assert set(c["by_reason"]) <= allowed and c["by_reason"]["missing_field"] == 1


@pytest.mark.timeout(400)
def test_sample_on_ray_actor_pool(ray_cluster, prompts, tmp_path):
    """Two actors at 0.5 CPU each on the 2-CPU test cluster: no deadlock, same rows as in-process."""
    data = {**base(tmp_path / "ray", shard_rows=2), "inputs": [prompts], "params": {"n": 1, "max_tokens": 4}}
    data["pool"] = {"workers": 2, "num_cpus": 0.5, "shard_rows": 2}
    m = run_stage("sample", data=data)
    assert m.counts.to_json()["out_rows"] == 6 and m.details["shards"] == 4
    local = run_stage(
        "sample", data={**data, "output": str(tmp_path / "local"), "pool": {"workers": 0, "shard_rows": 2}}
    )
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(read_dataset(tmp_path / "ray").to_pylist(), key=key) == sorted(
        read_dataset(tmp_path / "local").to_pylist(), key=key
    )
    assert local.counts.to_json() == m.counts.to_json()


KILL_SCRIPT = """
import json, sys
from rayalign.stages import run_stage
if __name__ == "__main__":
    run_stage("sample", data=json.loads(sys.argv[1]))
"""


@pytest.mark.timeout(400)
def test_killed_stage_resumes_every_row_exactly_once(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Tell me about the number {i}."} for i in range(16)]
    inp = write_jsonl(tmp_path / "p.jsonl", rows)
    data = {**base(tmp_path / "killed", shard_rows=2), "inputs": [inp], "params": {"n": 1, "max_tokens": 24}}
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RAYALIGN_TORCH_THREADS": "1"},
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(finished_shards(tmp_path / "killed")) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(finished_shards(tmp_path / "killed"))
    planned = json.loads((tmp_path / "killed" / "_plan.json").read_text())["shards"]
    assert planned >= 6, planned  # byte-range shards of ~2 rows each
    assert 2 <= done_before < planned and read_manifest(tmp_path / "killed") is None, "the kill must land mid-run"

    m = run_stage("sample", data=data)  # resume: finished shards are skipped
    assert m.details["complete"] and m.counts.to_json()["out_rows"] == 16
    resumed = read_dataset(tmp_path / "killed").to_pylist()
    ids = [r["id"] for r in resumed]
    assert len(ids) == len(set(ids)) == 16 and set(ids) == {f"q{i}-s0" for i in range(16)}
    # and the rows equal an uninterrupted run's
    fresh = run_stage("sample", data={**data, "output": str(tmp_path / "fresh")})
    assert fresh.counts.to_json() == m.counts.to_json()
    assert read_dataset(tmp_path / "fresh").to_pylist() == resumed
