"""Whole-node loss on a multi-node loopback cluster (tests/reliability/node_loss_jobs.py runs each
scenario as its own driver and cluster): every process of a worker node SIGKILLed mid-run, a
replacement node joins, and the work finishes as if nothing happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).with_name("node_loss_jobs.py")

pytestmark = [pytest.mark.slow]


def run_job(*args: str, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO / "src")
    run = subprocess.run([sys.executable, str(JOBS), *args], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (run.stdout + run.stderr)[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.timeout(360)
def test_train_on_two_nodes_survives_losing_a_node_with_the_uninterrupted_losses(tmp_path, chat_packed):
    """Two Ray Train workers, one per worker node, a checkpoint every step. Once step 2 is logged,
    node 2's raylet, agents and train worker are SIGKILLed at once; a third node joins. Ray Train
    restarts the group from the last checkpoint on nodes 1 and 3. Observed: the restart ran ~20 s
    after the kill; resumed from step 1 or 2 (rank 0 hands Ray each checkpoint right after logging
    its step); 5 steps logged once each, losses within 2e-6 of one process seeing the same rows."""
    out = run_job("train", str(tmp_path), chat_packed, timeout=340)
    assert out["error"] is None, out["error"]
    nodes = out["nodes"]
    assert {"raylet", "ray::RayTrainWorker"} <= set(out["killed"]), out["killed"]
    assert out["killed_pids_alive"] == []
    assert out["alive"][nodes["2"]] is False and out["alive"][nodes["3"]] is True
    assert out["workers_before"] == sorted([nodes["1"], nodes["2"]])  # one worker per node...
    assert out["workers_after"] == sorted([nodes["1"], nodes["3"]])  # ...and the replacement used
    # continued from a checkpoint taken before the kill (not from scratch, nothing skipped)
    assert 1 <= out["resumed_at"] <= out["killed_after_step"], out
    assert out["steps"] == list(range(1, 6))
    assert out["losses"] == pytest.approx(out["reference"], abs=1e-5)
    assert out["samples"], "the resumed run consumed other rows than the uninterrupted one"


@pytest.mark.timeout(380)
def test_serving_replica_node_lost_under_load_answers_again_within_60_s(tmp_path):
    """The engine replica's node (its raylet, agents and the replica) SIGKILLed under load from four
    `openai` clients; a replacement node joins. The ingress runs on the head (the job adds the
    engine's node only once the ingress is placed), so what is lost is the engine replica alone.
    Every answer is 200 or an OpenAI-shaped 503 with Retry-After (never a bare 500, a hang or a
    dropped connection), and the endpoint answers again within 60 s, from a replica on the new node.
    Observed: the requests the replica was running answered 503 at ~2.4 s (the GCS marks the node
    dead; in some runs none was running at the kill), requests sent meanwhile wait in the ingress for
    the replacement replica and are answered 200 at 18-25 s;
    the test took 90-140 s alone and 200 s beside other Ray tests (load average 20-30)."""
    out = run_job("serve", str(tmp_path), timeout=360)
    assert {"raylet", "ray::DashboardAgent"} <= set(out["killed"]) and any("EngineServer" in n for n in out["killed"])
    assert out["killed_pids_alive"] == []
    assert out["before"] >= 6 and set(out["statuses"]) <= {"200", "503"}, out["statuses"]
    assert out["first_ok_after_s"] is not None and out["first_ok_after_s"] < 60, out["after"]
    assert out["replica_moved"], "the answering replica is not a new one on the replacement node"
