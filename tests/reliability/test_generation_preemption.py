"""Spot preemption of a generation actor: SIGTERM (the notice a node's processes get) to the one
actor of a `sample` stage with 3 shards in flight, once some shards are committed. The shards it was
working on are not committed (a shard's marker is written last), Ray Data restarts the actor and
hands them out again, and the stage's output equals an uninterrupted run's, every row once."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from rayalign.data.shards import finished_shards, read_dataset
from rayalign.stages import run_stage
from shard_kill_helpers import run_and_kill_one_actor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
from test_shards_in_flight import assert_same_run, prompts_file, sample_data


@pytest.mark.timeout(400)
def test_sigterm_to_a_generation_actor_hands_its_shards_back(ray_cluster, tmp_path):
    inp = prompts_file(tmp_path / "p.jsonl", 21)
    out = tmp_path / "ray"
    data = sample_data(inp, out, 3, workers=1, max_tokens=16)
    result, _, done_at_kill = run_and_kill_one_actor(
        lambda: run_stage("sample", data=data), out, after_shards=2, start_s=300, finish_s=300, sig=signal.SIGTERM
    )
    planned = json.loads((out / "_plan.json").read_text())["shards"]
    assert done_at_kill < planned, "the notice must land mid-stage"
    c = result.counts.to_json()
    assert (c["in"], c["ok"], c["quarantined"], c["out_rows"]) == (22, 21, 1, 42)
    assert len(finished_shards(out)) == planned == result.details["shards"]
    ids = read_dataset(out, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 42

    local = run_stage("sample", data=sample_data(inp, tmp_path / "local", 1, max_tokens=16))
    assert local.counts.to_json() == c
    assert_same_run(tmp_path / "local", out)  # same rows and texts: nothing lost, doubled or resampled
