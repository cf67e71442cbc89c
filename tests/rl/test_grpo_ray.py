"""GRPO on 2 Ray Train workers (FSDP2 over gloo) with a rollout engine actor equals the 1-process run:
same prompts, same rollouts (seeds depend on the prompt row, not on the rank), so the first step's
rewards, loss and gradient norm agree; the second step's rollouts come from weights the workers
gathered from their FSDP2 shards and sent through the object store, so its rewards agree too.
Asynchronously (max_staleness 1) the ranks queue their rollouts on the engine actor one step ahead
and the actor stages each version beside them: still the 1-process (asynchronous) run's rewards."""

from __future__ import annotations

import json

import pytest
from grpo_helpers import TINY, grpo_config, write_prompts

from rayalign.stages import run_stage

pytestmark = pytest.mark.timeout(300)


def config(out, prompts, staleness: int = 0, **scaling) -> dict:
    return grpo_config(
        out,
        TINY,
        prompts,
        max_steps=2,
        aggregation="token",  # token averaging: the loss is not 0 by construction at ratio 1
        rewards=[{"name": "length", "params": {"target": 4, "unit": "chars"}}],
        scaling={"report_every": 0, **scaling},
        engine_cpus=0.5,
        asynchronous={"max_staleness": staleness},
    )


def records(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("staleness", [0, 1])
def test_two_workers_with_an_engine_actor_match_one_process(tmp_path, ray_cluster, staleness):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    one = run_stage("grpo", data=config(tmp_path / "one", prompts, staleness))
    two = run_stage("grpo", data=config(tmp_path / "two", prompts, staleness, workers=2, cpus_per_worker=0.5))
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(a) == len(b) == 2
    assert two.details["train"]["world"] == 2
    assert b[0]["reward_mean"] == a[0]["reward_mean"] and b[0]["response_length"] == a[0]["response_length"]
    assert a[0]["loss"] != 0.0
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], abs=1e-5)
    assert b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-4)
    assert b[1]["reward_mean"] == a[1]["reward_mean"]
    assert a[1]["staleness_max"] == b[1]["staleness_max"] == staleness
    assert two.checkpoint and one.checkpoint
