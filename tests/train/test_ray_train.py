"""Ray Train + FSDP2 over 2 gloo workers:

- the losses of 2 workers × 2 micro-batches equal one process × 4 micro-batches (≤ 1e-5),
- a Ray Train worker process is SIGKILLed from this test (by pid) after the step-2 checkpoint; Ray
  Train restarts the group from the last checkpoint and the run completes: every step logged once,
  every row consumed once, the loss curve equal to the uninterrupted run's,
- the exported final model loads with plain transformers and equals the single-process one,
- a sharded checkpoint written by 2 workers resumes in ONE process (DCP reshards) with the
  uninterrupted run's loss tail (≤ 1e-5).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from train_helpers import base_config

from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics

STEPS = 10


def _samples(run_dir: Path) -> dict[int, set[int]]:
    """step → set of row indices consumed by all ranks in that step (each step must appear once per rank)."""
    by_step: dict[int, set[int]] = {}
    for f in sorted((run_dir / "samples").glob("rank*.jsonl")):
        steps = [json.loads(x) for x in f.read_text().splitlines()]
        assert [s["step"] for s in steps] == sorted({s["step"] for s in steps}), f"{f.name}: a step repeated"
        for s in steps:
            by_step.setdefault(s["step"], set()).update(i for g in s["rows"] for i in g)
    return by_step


def _train_worker_pids() -> set[int]:
    """Live Ray Train worker processes of THIS test's cluster (descendants of this process: other
    Ray clusters on the machine are not touched). Ray titles them `ray::RayTrainWorker...`."""
    import psutil

    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except psutil.Error:
            continue
    return pids


def _kill_a_worker_after(run_dir: Path, step: int, done: threading.Event, timeout: float = 240) -> int | None:
    """SIGKILL one live Ray Train worker once `step` is logged (the step-2 checkpoint is committed by then)."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline and not done.is_set():
        if len(pids) < 2:
            pids = _train_worker_pids()  # found before the step is reached: the kill itself is instant
        logged = [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").exists() else []
        if pids and logged and max(logged) >= step:
            pid = max(pids)
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.02)
    return None


@pytest.mark.timeout(400)
def test_fsdp2_two_workers_match_one_process_and_survive_a_killed_worker(tmp_path, chat_packed, ray_cluster):
    common = dict(max_steps=STEPS, micro_batch_size=1, log_samples=True, checkpoint={"every": 2, "keep_last": 2})
    single = launch(TrainConfig.model_validate(base_config(tmp_path / "one", chat_packed, grad_accum=4, **common)))

    dist_dir = tmp_path / "two"
    cfg = base_config(
        dist_dir,
        chat_packed,
        grad_accum=2,
        name="fsdp-test",
        scaling={"workers": 2, "cpus_per_worker": 0.5, "max_failures": 1, "report_every": 2},
        **common,
    )
    done = threading.Event()
    killed: list[int | None] = []
    killer = threading.Thread(target=lambda: killed.append(_kill_a_worker_after(dist_dir, 3, done)))
    killer.start()
    try:
        res = launch(TrainConfig.model_validate(cfg))
    finally:
        done.set()
        killer.join()

    assert killed and killed[0] is not None, "no Ray Train worker was killed before the run ended"
    import psutil

    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    # the restarted group resumed from a checkpoint taken at or after step 2 (not from scratch)
    assert res.details["resumed_at"] >= 2 and single.details["resumed_at"] == 0
    assert res.metrics["steps"] == STEPS
    recs = read_metrics(dist_dir)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    one = [r["loss"] for r in read_metrics(tmp_path / "one")]
    assert [r["loss"] for r in recs] == pytest.approx(one, abs=1e-5)
    assert res.metrics["final_loss"] == pytest.approx(single.metrics["final_loss"], abs=1e-5)
    assert _samples(dist_dir) == _samples(tmp_path / "one")  # same rows, none repeated or skipped

    ray_ck = res.details.get("ray_checkpoint")
    assert ray_ck and (Path(ray_ck) / "model" / "config.json").exists()
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(res.checkpoint).state_dict()
    b = AutoModelForCausalLM.from_pretrained(single.checkpoint).state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.timeout(300)
def test_sharded_checkpoint_of_two_workers_resumes_in_one_process(tmp_path, chat_packed, ray_cluster):
    """2 workers stop after step 3 (DCP shards of 2 ranks, saved asynchronously every step while
    training goes on); the same run resumes with workers: 0."""
    common = dict(max_steps=6, micro_batch_size=1, grad_accum=2, optim={"warmup_steps": 2})
    launch(TrainConfig.model_validate(base_config(tmp_path / "full", chat_packed, **common)))
    part = tmp_path / "part"
    two = {"workers": 2, "cpus_per_worker": 0.5, "max_failures": 0, "report_every": 0}
    first = launch(
        TrainConfig.model_validate(
            base_config(
                part,
                chat_packed,
                name="reshard",
                stop_at_step=3,
                scaling=two,
                checkpoint={"every": 1, "keep_last": 2, "async_save": True},
                **{**common, "grad_accum": 1},
            )
        )
    )
    assert first.metrics["steps"] == 3 and first.details["world"] == 2
    shards = sorted(p.name for p in (part / "checkpoints" / "step-000003" / "dcp").glob("*.distcp"))
    assert len(shards) == 2  # one file per rank: nothing was gathered
    kept = sorted(p.name for p in (part / "checkpoints").iterdir() if (p / "COMPLETE").exists())
    assert kept == ["step-000002", "step-000003"]  # every async save was committed; keep_last held
    resumed = launch(TrainConfig.model_validate(base_config(part, chat_packed, **common)))
    assert resumed.metrics["steps"] == 6 and resumed.details["world"] == 1
    a, b = [r["loss"] for r in read_metrics(tmp_path / "full")], [r["loss"] for r in read_metrics(part)]
    assert [r["step"] for r in read_metrics(part)] == [1, 2, 3, 4, 5, 6]
    assert b == pytest.approx(a, abs=1e-5)
