"""cluster/aws.yaml's node types on Ray's own autoscaler: `ray start --head --autoscaling-config`
with Ray's fake multi-node provider (the real autoscaler; each node a real raylet started as local
processes), every node on 127.0.0.1.

The node types, their declared resources and `min_workers` are read from cluster/aws.yaml (only
`max_workers` is capped to fit this machine), so a change there that breaks scaling fails here:
- a CPU-only stage (`prepare`) starts CPU workers and no GPU node;
- every process of the worker node running a stage's actor SIGKILLed mid-stage (its raylet and the
  actor): the autoscaler terminates the lost node and starts a replacement, and the stage completes
  on it with every row exactly once;
- a stage asking for GPUs starts the GPU type from zero and completes (no CUDA here: the compute
  falls back to CPU — what is tested is scheduling);
- a generation actor for a tensor-parallel-2 engine books exactly 2 GPUs, in its placement group,
  and holds none itself;
- idle worker nodes are scaled back down.

The cluster lives in its own temp dir (`RAY_TMPDIR`) and ports, and is stopped by signalling exactly
the processes it started (those whose environment names that temp dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ray_ports import free_port, listener_flags
from shard_kill_helpers import pids_with_env

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).with_name("autoscaling_jobs.py")
CAP = 1  # max_workers per type here (one fake node each on a 2-core box)
IDLE_MINUTES = 0.25

pytestmark = [pytest.mark.slow]


def aws_node_types() -> tuple[dict, dict]:
    """(head resources, worker node types) of cluster/aws.yaml in the fake provider's shape."""
    doc = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    head = doc["available_node_types"][doc["head_node_type"]]
    workers = {
        name: {
            "resources": dict(t["resources"]),
            "min_workers": t["min_workers"],
            "max_workers": min(t["max_workers"], CAP),
            "node_config": {},
        }
        for name, t in doc["available_node_types"].items()
        if name != doc["head_node_type"]
    }
    return dict(head["resources"]), workers


def keep_logs(temp: str, keep: Path) -> None:
    """Copy the head's output and the cluster's log files (GCS, autoscaler monitor, raylets) out of
    its temp folder, which teardown removes: pytest keeps `keep` when the run fails (pyproject:
    tmp_path_retention_policy = "failed"), so a cluster that stopped answering can be read afterwards."""
    for f in [Path(temp) / "head.log", *Path(temp).glob("session_2*/logs/*")]:
        if f.is_file():
            with contextlib.suppress(OSError):
                shutil.copy2(f, keep / f.name)


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    head_resources, workers = aws_node_types()
    temp = tempfile.mkdtemp(prefix="rayalign-as-", dir="/tmp")
    port = free_port()
    config = {
        "cluster_name": "rayalign-fake",
        "max_workers": CAP * len(workers),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_MINUTES,
        # fake nodes are started by the provider itself: no SSH updaters, no launch-config hashing
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            **workers,
            "ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    path = Path(temp) / "autoscaling.json"
    path.write_text(json.dumps(config))
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "RAY_TMPDIR": temp,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # a killed node: the GCS marks it dead after 5 failed 1 s health checks (default 3 s each),
        # and the autoscaler terminates it 15 s after its last report (default 30 s)
        "RAY_health_check_period_ms": "1000",
        "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "15",
    }
    ray_bin = str(Path(sys.executable).with_name("ray"))
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115  # the head's output for as long as it runs
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--temp-dir={temp}", f"--autoscaling-config={path}", "--include-dashboard=false",
           f"--num-cpus={int(head_resources.get('CPU', 0))}", f"--num-gpus={int(head_resources.get('GPU', 0))}",
           "--disable-usage-stats", *listener_flags(head=True)]  # fmt: skip
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while subprocess.run([ray_bin, "status", f"--address={address}"], env=env, capture_output=True).returncode:
            assert head.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
            assert time.time() < deadline, "the head did not come up in 90 s"
            time.sleep(1)
        yield {"env": {**env, "RAY_ADDRESS": address}, "workers": workers, "temp": temp, "ray": ray_bin}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in pids_with_env(f"RAY_TMPDIR={temp}"):  # the fake nodes the autoscaler started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        keep_logs(temp, tmp_path_factory.mktemp("autoscaling-logs"))
        shutil.rmtree(temp, ignore_errors=True)


def run_job(cluster: dict, job: str, work: Path, timeout: float = 150) -> dict:
    env = {**cluster["env"], "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(JOBS), job, str(work)], env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (run.stdout + run.stderr)[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


def gpu_nodes(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n["resources"].get("GPU", 0) > 0]


def workers_of(nodes: list[dict], cluster: dict, kind: str) -> list[dict]:
    want = cluster["workers"][kind]["resources"]
    return [n for n in nodes if all(n["resources"].get(k) == v for k, v in want.items())]


def test_node_types_come_from_aws_yaml_with_gpus_declared_and_min_zero():
    head, workers = aws_node_types()
    assert head == {"CPU": 0}
    assert set(workers) == {"cpu_workers", "gpu_workers"}
    assert workers["gpu_workers"]["resources"]["GPU"] == 8 and "GPU" not in workers["cpu_workers"]["resources"]
    assert all(t["min_workers"] == 0 for t in workers.values())


@pytest.mark.timeout(200)
def test_a_cpu_stage_scales_cpu_workers_and_starts_no_gpu_node(autoscaling_cluster, tmp_path):
    out = run_job(autoscaling_cluster, "cpu-stage", tmp_path)
    assert out["ok"] > 0
    assert workers_of(out["nodes"], autoscaling_cluster, "cpu_workers"), out["nodes"]
    assert gpu_nodes(out["nodes"]) == [], "a CPU-only stage started a GPU node"


@pytest.mark.timeout(150)
def test_a_worker_node_killed_mid_stage_is_replaced_and_every_row_lands_once(autoscaling_cluster, tmp_path):
    """Every process of the node running a sharded stage's (single) actor — its raylet and the actor
    (the only processes a fake node has) — is SIGKILLed once 3 of the stage's 25 shards are
    committed. The GCS marks the node dead, Ray restarts the actor and retries its shard, the
    autoscaler terminates the lost node and starts a new CPU worker (the type's cap here is 1, so
    only once the lost one is gone), and the stage finishes there. Observed: node `…00001` killed
    after 3 shards, `…00002` (cpu_workers) started and ran the other 22, the next shard committed
    ~26-29 s after the kill, no GPU node; 120 rows in = 109 ok + 11 quarantined, each id once. Runs
    before the GPU tests, so no idle GPU node (which has CPUs too) can take the restarted actor.
    """
    from autoscaling_jobs import NODE_KILL_BAD_EVERY, NODE_KILL_ROWS

    from rayalign.data.shards import read_dataset, read_manifest

    work = tmp_path / "work"
    out = run_job(autoscaling_cluster, "node-kill", work, timeout=140)
    killed = out["killed"]
    assert "raylet" in killed["names"] and any(n.startswith("ray::") for n in killed["names"]), killed
    planned = json.loads((work / "out" / "_plan.json").read_text())["shards"]
    assert 3 <= out["done_at_kill"] < planned == out["shards"] == len(read_manifest(work / "out")["shards"])

    bad = {i for i in range(NODE_KILL_ROWS) if i % NODE_KILL_BAD_EVERY == 0}
    c = out["counts"]
    assert (c["in"], c["ok"], c["quarantined"]) == (NODE_KILL_ROWS, NODE_KILL_ROWS - len(bad), len(bad)), c
    ids = read_dataset(work / "out", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == {f"p{i}" for i in range(NODE_KILL_ROWS) if i not in bad}
    raws = [r for f in (work / "out" / "quarantine").glob("*.parquet") for r in pq.read_table(f)["raw"].to_pylist()]
    assert sorted(raws) == sorted(f'{{"id": "p{i}", "prompt": ' for i in bad)  # the broken lines, once each

    nodes = {n["id"]: n for n in out["nodes"]}
    assert not nodes.get(killed["node"], {}).get("alive"), "the killed node is still alive"
    after = set(out["batch_nodes"][killed["lines"] :]) - {killed["node"]}
    assert after, "no shard ran after the kill"
    for node in after:  # the rest ran on a CPU worker started after the kill, and no GPU node started
        assert node not in killed["alive"], "the shards after the kill ran on a node that was already up"
        assert nodes[node]["alive"] and workers_of([nodes[node]], autoscaling_cluster, "cpu_workers"), nodes[node]
    assert gpu_nodes([n for n in out["nodes"] if n["alive"]]) == []


@pytest.mark.timeout(200)
def test_a_gpu_stage_scales_the_gpu_type_up_from_zero_and_completes(autoscaling_cluster, tmp_path):
    out = run_job(autoscaling_cluster, "gpu-stage", tmp_path)
    assert out["ok"] > 0
    assert len(gpu_nodes(out["nodes"])) == 1, out["nodes"]
    assert workers_of(out["nodes"], autoscaling_cluster, "gpu_workers")


@pytest.mark.timeout(200)
def test_a_tensor_parallel_2_engine_host_books_exactly_2_gpus(autoscaling_cluster, tmp_path):
    out = run_job(autoscaling_cluster, "tp2-actor", tmp_path)
    seen = out["observed"]
    assert "GPU" not in seen["assigned"], seen  # the actor itself holds no GPU...
    assert seen["bundles"] is not None and sum(b.get("GPU", 0) for b in seen["bundles"]) == 2  # ...its group 2
    assert seen["gpus_total"] - seen["gpus_free"] == 2, seen  # and nothing else is booked
    assert out["groups"] == 1  # one actor, one group, released after the stage:
    assert out["gpus_free_after"] == seen["gpus_total"]


@pytest.mark.timeout(200)
def test_idle_worker_nodes_scale_back_down(autoscaling_cluster):
    env = autoscaling_cluster["env"]
    # the driver also prints the autoscaler's events ("(autoscaler +0s) Resized to ..."): tag the answer
    code = "import json, ray; ray.init(); print('NODES ' + json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))"
    deadline = time.time() + 150
    while True:
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
        assert run.returncode == 0, run.stderr[-3000:]
        alive = json.loads(next(x for x in run.stdout.splitlines() if x.startswith("NODES "))[len("NODES ") :])
        if [r for r in alive if r.get("CPU", 0) > 0 or r.get("GPU", 0) > 0] == []:
            return  # only the head (CPU 0) is left
        assert time.time() < deadline, f"worker nodes still up after 150 s: {alive}"
        time.sleep(5)
