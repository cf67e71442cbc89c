"""Ray Train + FSDP2 over 2 gloo workers, in ONE fit() (each costs ≥ 15 s):

- the losses of 2 workers × 2 micro-batches equal one process × 4 micro-batches (≤ 1e-5),
- rank 1 is killed after step 3 (test hook, once); Ray Train restarts the group from the step-2
  checkpoint and the run completes: every step logged once, every row consumed once,
- the final FSDP-gathered model loads with plain transformers and equals the single-process one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import base_config

from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics


def _samples(run_dir: Path) -> dict[int, set[int]]:
    """step → set of row indices consumed by all ranks in that step (each step must appear once per rank)."""
    by_step: dict[int, set[int]] = {}
    for f in sorted((run_dir / "samples").glob("rank*.jsonl")):
        steps = [json.loads(x) for x in f.read_text().splitlines()]
        assert [s["step"] for s in steps] == sorted({s["step"] for s in steps}), f"{f.name}: a step repeated"
        for s in steps:
            by_step.setdefault(s["step"], set()).update(i for g in s["rows"] for i in g)
    return by_step


@pytest.mark.timeout(300)
def test_fsdp2_two_workers_match_one_process_and_survive_a_killed_worker(
        tmp_path, chat_packed, ray_cluster, monkeypatch):
    common = dict(max_steps=5, micro_batch_size=1, log_samples=True, checkpoint={"every": 2, "keep_last": 2})
    single = launch(TrainConfig.model_validate(base_config(tmp_path / "one", chat_packed, grad_accum=4, **common)))

    monkeypatch.setenv("RAYALIGN_TEST_KILL_AT_STEP", "3")
    dist_dir = tmp_path / "two"
    cfg = base_config(dist_dir, chat_packed, grad_accum=2, name="fsdp-test",
                      scaling={"workers": 2, "cpus_per_worker": 0.5, "max_failures": 1, "report_every": 2},
                      **common)
    res = launch(TrainConfig.model_validate(cfg))

    assert (dist_dir / ".test-killed").read_text() == "3"  # the worker really died once
    assert res["steps"] == 5
    recs = read_metrics(dist_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    one = [r["loss"] for r in read_metrics(tmp_path / "one")]
    assert [r["loss"] for r in recs] == pytest.approx(one, abs=1e-5)
    assert res["final_loss"] == pytest.approx(single["final_loss"], abs=1e-5)
    assert _samples(dist_dir) == _samples(tmp_path / "one")  # same rows, none repeated or skipped

    assert res.get("ray_checkpoint") and (Path(res["ray_checkpoint"]) / "model" / "config.json").exists()
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(res["checkpoint"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(single["checkpoint"]).state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
