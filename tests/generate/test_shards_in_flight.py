"""Several shards in flight per generation actor (threads over one engine) give exactly the rows of
one shard at a time: same ids, same texts (greedy and seeded sampling), every row once, counts that
reconcile; a threaded Ray actor SIGKILLed mid-run still completes exactly once. (The vLLM side —
rows of several shards sharing one running batch — is in test_vllm_engine.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.data.shards import finished_shards, read_dataset, read_manifest
from rayalign.generate.sample import SampleConfig, run_sample
from rayalign.stages import run_stage
from shard_kill_helpers import run_and_kill_one_actor

TINY = {"backend": "hf", "model": "tiny-random:llama", "max_model_len": 768, "batch_size": 8}


def prompts_file(path: Path, n: int) -> str:
    rows = [{"id": f"q{i}", "prompt": f"Question {i}: " + "tell me more " * (i % 5)} for i in range(n)]
    rows.insert(3, {"id": "bad", "text": "no prompt field"})  # quarantined: missing_field
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sample_data(inp: str, out: Path, in_flight: int | str, workers: int = 0, **params) -> dict:
    return {
        "inputs": [inp],
        "output": str(out),
        "engine": TINY,
        "params": {"n": 2, "max_tokens": 6, "temperature": 1.0, "seed": 7, **params},
        "pool": {"workers": workers, "num_cpus": 0.5, "shard_rows": 3, "shards_in_flight": in_flight},
    }


def assert_same_run(a: Path, b: Path) -> None:
    """Same rows in the same shard order, same per-shard reports (counts, reasons)."""
    rows_a, rows_b = read_dataset(a).to_pylist(), read_dataset(b).to_pylist()
    assert rows_a == rows_b
    ids = [r["id"] for r in rows_a]
    assert len(ids) == len(set(ids))
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma is not None and mb is not None
    assert ma["shards"] == mb["shards"] and ma["counts"] == mb["counts"]


@pytest.mark.timeout(300)
def test_in_process_threads_give_the_rows_of_one_shard_at_a_time(tmp_path):
    inp = prompts_file(tmp_path / "p.jsonl", 20)
    one = run_stage("sample", data=sample_data(inp, tmp_path / "one", 1))
    four = run_stage("sample", data=sample_data(inp, tmp_path / "four", 4))
    c = four.counts.to_json()
    assert (c["in"], c["ok"], c["quarantined"], c["out_rows"]) == (21, 20, 1, 40)
    assert c["by_reason"] == {"missing_field": 1} and one.counts.to_json() == c
    assert four.details["shards"] >= 6  # byte-range shards of ~3 rows: several really are in flight
    assert_same_run(tmp_path / "one", tmp_path / "four")
    ids = {r["id"] for r in read_dataset(tmp_path / "four").to_pylist()}
    assert ids == {f"q{i}-s{k}" for i in range(20) for k in range(2)}


@pytest.mark.timeout(600)
def test_threaded_actor_killed_mid_run_completes_exactly_once(ray_cluster, tmp_path):
    """One actor with 3 shards in flight, SIGKILLed once some shards are committed: Ray restarts it
    and retries its shards; the result equals an uninterrupted one-shard-at-a-time run."""
    inp = prompts_file(tmp_path / "p.jsonl", 40)
    out = tmp_path / "ray"
    data = sample_data(inp, out, 3, workers=1, max_tokens=24)
    result, _, done_at_kill = run_and_kill_one_actor(
        lambda: run_stage("sample", data=data), out, after_shards=2, start_s=300, finish_s=400
    )
    planned = json.loads((out / "_plan.json").read_text())["shards"]
    assert done_at_kill < planned, "the kill must land mid-stage"
    c = result.counts.to_json()
    assert (c["in"], c["ok"], c["quarantined"], c["out_rows"]) == (41, 40, 1, 80)
    assert len(finished_shards(out)) == planned == result.details["shards"]

    local = run_stage("sample", data=sample_data(inp, tmp_path / "local", 1, max_tokens=24))
    assert local.counts.to_json() == c
    assert_same_run(tmp_path / "local", out)


@pytest.mark.timeout(300)
def test_auto_in_flight_follows_engine_batch_and_gives_the_rows_of_one_at_a_time(tmp_path):
    """`auto` (the generation default): HF batch 4, n 2 and shards of ~3 rows → ceil(2*4/3) = 3
    shards in flight, logged once; the rows equal those of one shard at a time."""
    inp = prompts_file(tmp_path / "p.jsonl", 20)
    logs: list[str] = []
    data = sample_data(inp, tmp_path / "auto", "auto")
    data["engine"] = {**TINY, "batch_size": 4}
    auto = run_sample(SampleConfig.model_validate(data), log=logs.append)
    one_data = sample_data(inp, tmp_path / "one", 1)
    one_data["engine"] = {**TINY, "batch_size": 4}
    one = run_stage("sample", data=one_data)
    said = [m for m in logs if "in flight" in m]
    assert said == ["[sample] 3 shard(s) in flight per actor: engine runs 4 at once, shards of 3 rows"]
    assert auto.counts.to_json() == one.counts.to_json() and auto.counts.out_rows == 40
    assert_same_run(tmp_path / "one", tmp_path / "auto")
