"""The runner against a real Ray head: `ray job submit` of a pipeline, and kill -9 + resume (of
`rayalign run`, and of a `ray job`'s driver followed by the same job submitted again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ray_job_helpers import ray_job_submit
from rayalign.data.shards import finished_shards

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def pipeline_yaml(tmp_path: Path, run_dir: Path, pairs_shard_rows: int = 64) -> Path:
    """chat (inline) → pairs (Ray Data actor pool, small shards so it takes a few seconds) → prompts."""
    doc = {
        "run_dir": str(run_dir),
        "defaults": {"model": "tiny-random:llama"},
        "stages": [
            {
                "name": "chat",
                "stage": "prepare",
                "config": {
                    "kind": "chat",
                    "inputs": ["rayjobs/data/chat.jsonl"],
                    "max_length": 256,
                    "seq_len": 512,
                    "pool": {"workers": 0},
                },
            },
            {
                "name": "pairs",
                "stage": "prepare",
                "config": {
                    "kind": "pairs",
                    "inputs": ["rayjobs/data/pairs.jsonl"],
                    "max_length": "${stages.chat.max_length}",
                    "pool": {"workers": 1, "num_cpus": 0.5, "shard_rows": pairs_shard_rows},
                },
            },
            {
                "name": "prompts",
                "stage": "prepare",
                "config": {"kind": "prompts", "inputs": ["rayjobs/data/prompts.jsonl"], "pool": {"workers": 0}},
            },
        ],
    }
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def check_summary(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "complete"
    counts = {x["name"]: (x["counts"]["in"], x["counts"]["ok"], x["counts"]["out_rows"]) for x in s["stages"]}
    # the bundled samples hold 10 / 7 / 7 deliberately broken rows; chat packs into 25 rows of 512
    # (its byte-range plan cuts the file into a large shard and a small tail, each packed on its own)
    assert counts == {"chat": (230, 220, 25), "pairs": (227, 220, 220), "prompts": (207, 200, 200)}
    return s


@pytest.mark.timeout(240)
def test_ray_job_submit_runs_pipeline(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    p = pipeline_yaml(tmp_path, run_dir)
    cmd = [
        str(VENV_BIN / "ray"),
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--working-dir",
        str(REPO),
        "--runtime-env",
        str(REPO / "cluster" / "runtime_env.yaml"),
        "--",
        str(VENV_BIN / "python"),
        "rayjobs/pipeline.py",
        str(p),
    ]
    log = ray_job_submit(cmd, ray_head["env"], timeout=220)
    assert "succeeded" in log
    s = check_summary(run_dir)
    assert [x["skipped"] for x in s["stages"]] == [False, False, False]


def pool_actors(dashboard: str, since: set[str] | None = None) -> dict[str, str]:
    """{actor id: state} of the cluster's actors that hold resources (a stage's pool; Ray Data's
    detached bookkeeping actors hold none and outlive every job by design), dead ones included,
    leaving out the ids in `since` (actors of earlier tests on this head)."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, detail=True, timeout=20, limit=10_000)
    return {a.actor_id: a.state for a in actors if a.required_resources and a.actor_id not in (since or set())}


def available_cpus(env: dict) -> float:
    """The head's free CPUs, asked by a fresh driver (so this test process never joins the cluster)."""
    code = "import ray; ray.init(); print(ray.available_resources().get('CPU', 0))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_kill_mid_pipeline_then_resume(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    p = pipeline_yaml(tmp_path, run_dir, pairs_shard_rows=4)  # ~57 shards: the kill lands mid-stage
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["gcs"]}
    before = set(pool_actors(ray_head["dashboard"]))
    runner = [str(VENV_BIN / "rayalign"), "run", str(p)]
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - the child writes it until killed below
    proc = subprocess.Popen(runner, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    # wait until the first stage is complete and the second has finished at least one shard, then
    # kill at once (nothing slow in between: on a loaded box the stage would finish meanwhile)
    while len(finished_shards(run_dir / "pairs")) < 1:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "the second stage never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    # the dead driver's pool actors (Ray's state API, dead ones included) are gone and their CPUs
    # back, within a bound
    deadline = time.time() + 60
    while True:
        pool = pool_actors(ray_head["dashboard"], since=before)
        held = {k: v for k, v in pool.items() if v != "DEAD"}
        if pool and not held and available_cpus(env) == 2:
            break
        assert time.time() < deadline, f"the killed driver still holds actors or CPUs: {held or 'no pool seen'}"
        time.sleep(0.5)
    assert json.loads((run_dir / "chat" / "stage.json").read_text())["status"] == "complete"
    assert json.loads((run_dir / "pairs" / "stage.json").read_text())["status"] == "running"
    shards_done = len(finished_shards(run_dir / "pairs"))
    planned = json.loads((run_dir / "pairs" / "_plan.json").read_text())["shards"]
    assert shards_done < planned, "the kill must land mid-stage"
    assert not (run_dir / "prompts").exists()

    out = subprocess.run(runner, env=env, cwd=REPO, capture_output=True, text=True, timeout=200)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "chat (prepare): already complete" in text
    assert "resuming an unfinished run" in text
    # the killed stage resumed by shard instead of starting over; stages' own lines go to the run's
    # log file (the terminal shows the progress display)
    logs = "".join(p.read_text() for p in sorted((run_dir / "logs").glob("run-*.log")))
    assert f"{planned} shard(s), rows counted as read; {shards_done} done" in logs
    s = check_summary(run_dir)
    assert [x["skipped"] for x in s["stages"]] == [True, False, False]
    # every pair row written exactly once across the killed and the resumed run
    from rayalign.data.shards import read_dataset

    ids = read_dataset(run_dir / "pairs", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 220


def submit(ray_head: dict, pipeline: Path, job_id: str) -> None:
    """`ray job submit --no-wait` of `pipeline` (returns once the job is accepted)."""
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--no-wait",
           "--submission-id", job_id, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"),
           "--", str(VENV_BIN / "python"), "rayjobs/pipeline.py", str(pipeline)]  # fmt: skip
    ray_job_submit(cmd, ray_head["env"])


def job_info(ray_head: dict, job_id: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{ray_head['dashboard']}/api/jobs/{job_id}", timeout=10) as r:
        return json.loads(r.read())


def job_driver_pids(pipeline: Path) -> list[int]:
    """The job's entrypoint process (`python rayjobs/pipeline.py <this test's yaml>`): the driver."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "rayjobs/pipeline.py" in cmd and str(pipeline) in cmd and "/bin/sh" not in cmd[0]:
            pids.append(p.pid)
    return pids


@pytest.mark.timeout(300)
def test_ray_job_driver_sigkilled_then_the_same_job_submitted_again_resumes(ray_head, tmp_path):
    """SIGKILL of a `ray job`'s driver mid-stage (the job supervisor stays, as when the driver's
    process dies alone): the job ends FAILED, the dead driver's actors are gone and their CPUs free
    (Ray's state API); the same pipeline submitted again skips the finished stage, resumes the
    killed one by shard and writes every row once."""
    run_dir = tmp_path / "run"
    p = pipeline_yaml(tmp_path, run_dir, pairs_shard_rows=4)  # ~57 shards: the kill lands mid-stage
    first = f"rayalign-kill-{int(time.time())}"
    submit(ray_head, p, first)
    deadline = time.time() + 180
    while not (pids := job_driver_pids(p)):
        assert job_info(ray_head, first)["status"] in ("PENDING", "RUNNING"), job_info(ray_head, first)
        assert time.time() < deadline, "the job's driver never started"
        time.sleep(0.2)
    assert len(pids) == 1, pids
    while len(finished_shards(run_dir / "pairs")) < 1:
        assert psutil.pid_exists(pids[0]), job_info(ray_head, first)
        assert time.time() < deadline, "the second stage never started"
        time.sleep(0.02)
    os.kill(pids[0], signal.SIGKILL)
    while job_info(ray_head, first)["status"] in ("PENDING", "RUNNING"):
        assert time.time() < deadline + 60, "the job did not end after its driver was killed"
        time.sleep(0.5)
    info = job_info(ray_head, first)
    assert info["status"] == "FAILED", info
    # the dead driver's actors that held resources (its stage's pool) are gone and the CPUs free
    from ray.util.state import list_actors

    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["gcs"]}
    deadline = time.time() + 60
    while True:
        mine = list_actors(address=ray_head["dashboard"], filters=[("job_id", "=", info["job_id"])], detail=True)
        pool = [a for a in mine if a.required_resources]
        held = [f"{a.class_name} {a.state} {a.required_resources}" for a in pool if a.state != "DEAD"]
        if pool and not held and available_cpus(env) == 2:
            break
        assert time.time() < deadline, f"the killed job still holds actors or CPUs: {held or 'no pool seen'}"
        time.sleep(0.5)
    shards_done = len(finished_shards(run_dir / "pairs"))
    planned = json.loads((run_dir / "pairs" / "_plan.json").read_text())["shards"]
    assert shards_done < planned, "the kill must land mid-stage"
    assert json.loads((run_dir / "pairs" / "stage.json").read_text())["status"] == "running"

    again = first + "-again"
    submit(ray_head, p, again)
    while (status := job_info(ray_head, again)["status"]) in ("PENDING", "RUNNING"):
        assert time.time() < deadline + 180, "the resubmitted job did not finish"
        time.sleep(1)
    assert status == "SUCCEEDED", job_info(ray_head, again)
    s = check_summary(run_dir)
    assert [x["skipped"] for x in s["stages"]] == [True, False, False]
    logs = "".join(f.read_text() for f in sorted((run_dir / "logs").glob("run-*.log")))
    assert f"{planned} shard(s), rows counted as read; {shards_done} done" in logs
    from rayalign.data.shards import read_dataset

    ids = read_dataset(run_dir / "pairs", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 220
