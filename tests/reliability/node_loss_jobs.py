"""Whole-node loss on a multi-node Ray cluster on 127.0.0.1, each scenario a driver in a fresh
interpreter (its cluster is Ray's own `cluster_utils.Cluster`: every node a real raylet with its
agents and workers, started as local processes; this process is the driver). Prints one JSON line
`RESULT {...}`; tests/reliability/test_node_loss.py asserts it, benchmarks/failure_matrix.py
tabulates it.

    python tests/reliability/node_loss_jobs.py train WORK_DIR PACKED_DATA
    python tests/reliability/node_loss_jobs.py serve WORK_DIR [--colocated]

`train`: a head without CPUs and two worker nodes with one training slot each, so the two Ray Train
workers run one per node. Once step 2 is logged (a checkpoint every step), every process of node 2
(its raylet and everything under it: agents and workers) is SIGKILLed at once; a replacement node
joins; Ray Train's FailureConfig restarts the group from the last checkpoint on nodes 1 and 3.

`serve`: the OpenAI endpoint (hf backend, tiny model) with its HTTP proxy on the head (no CPUs) and
its engine replica on node 2 (the only node with CPUs), under load from the `openai` client; every
process of node 2 is SIGKILLed, a replacement node joins, Serve starts the replica there. Every
answer is recorded (status and time) until the endpoint has answered again. `--colocated`: one
deployment holding ingress and engine (`colocate_engine`), its replica on node 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))

SLOT = "train_slot"  # the custom resource each training worker requests: one per worker node
STEPS, KILL_AFTER = 5, 2
# the GCS marks a node dead after 4 missed 0.5 s health checks (default: 5 missed 3 s checks)
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


def node_processes(node) -> list[psutil.Process]:
    """Every live process of a `cluster_utils` node: its raylet and the raylet's descendants (the
    dashboard and runtime-env agents, and every worker the raylet started)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [raylet, *raylet.children(recursive=True)]


def sigkill_all(procs: list[psutil.Process]) -> list[str]:
    """SIGKILL each process; their names, an actor's as `ray::Class` (Ray titles an actor that is
    running a method `ray::Class.method`, e.g. a train worker answering `poll_status`)."""
    names = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            name = p.name()
            names.append(name.split(".")[0] if name.startswith("ray::") else name)
            p.send_signal(signal.SIGKILL)
    return names


def train_workers() -> dict[str, str]:
    """{actor id: node id} of the live Ray Train workers (Ray's state API)."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True, timeout=20)
    return {a.actor_id: a.node_id for a in alive if "RayTrainWorker" in a.class_name}


def actor_pids(cls: str) -> set[int]:
    """Process ids of the live actors whose class name contains `cls` (Ray's state API)."""
    from ray.util.state import list_actors

    return {a.pid for a in list_actors(filters=[("state", "=", "ALIVE")], timeout=20) if cls in a.class_name}


def logged_steps(run_dir: Path) -> list[int]:
    from rayalign.train.metrics import read_metrics

    return [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").exists() else []


def train(work: Path, data: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from train_helpers import base_config

    from rayalign.train.config import TrainConfig
    from rayalign.train.launcher import launch
    from rayalign.train.metrics import read_metrics

    common = dict(max_steps=STEPS, micro_batch_size=1, log_samples=True, checkpoint={"every": 1, "keep_last": 2})
    t0 = time.monotonic()
    launch(TrainConfig.model_validate(base_config(work / "one", data, grad_accum=4, **common)))
    reference_s = time.monotonic() - t0

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH})
    try:
        node1 = cluster.add_node(num_cpus=1, resources={SLOT: 1})
        node2 = cluster.add_node(num_cpus=1, resources={SLOT: 1})
        os.environ["RAY_ADDRESS"] = cluster.address
        from rayalign.raycluster import ensure_ray

        ensure_ray()
        ids = {n["NodeManagerAddress"] + ":" + str(n["NodeManagerPort"]): n["NodeID"] for n in ray.nodes()}

        def node_id(node) -> str:
            return ids[f"{node.node_ip_address}:{node.node_manager_port}"]

        run_dir = work / "two"
        cfg = base_config(
            run_dir,
            data,
            grad_accum=2,
            name="node-loss",
            scaling={"workers": 2, "cpus_per_worker": 1, "resources_per_worker": {SLOT: 1}, "max_failures": 1,
                     "report_every": 1},
            **common,
        )  # fmt: skip
        result: dict = {}

        def run() -> None:
            try:
                result["value"] = launch(TrainConfig.model_validate(cfg))
            except BaseException as e:  # reported below
                result["error"] = repr(e)

        driver = threading.Thread(target=run, daemon=True)
        t0 = time.monotonic()
        driver.start()
        deadline = time.monotonic() + 150
        before: dict[str, str] = {}
        while max(logged_steps(run_dir), default=0) < KILL_AFTER:
            assert driver.is_alive(), f"the run ended before the kill: {result}"
            assert time.monotonic() < deadline, "the run never reached the kill step"
            if len(before) < 2:
                before = train_workers()
            time.sleep(0.05)
        victims = node_processes(node2)
        killed_at = max(logged_steps(run_dir))
        names = sigkill_all(victims)
        t_kill = time.monotonic()
        cluster.remove_node(node2, allow_graceful=False)  # only the bookkeeping: its processes are gone
        node3 = cluster.add_node(num_cpus=1, resources={SLOT: 1})
        ids.update({n["NodeManagerAddress"] + ":" + str(n["NodeManagerPort"]): n["NodeID"] for n in ray.nodes()})
        after: dict[str, str] = {}
        while driver.is_alive() and time.monotonic() < deadline + 120:
            now = train_workers()
            if now and not set(now) & set(before):
                after = now  # the restarted group
            driver.join(timeout=0.5)
        assert not driver.is_alive(), "the run did not finish after the node loss"
        run_s = time.monotonic() - t0
        alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        res = result.get("value")
        recs = read_metrics(run_dir)
        return {
            "error": result.get("error"),
            "steps": [r["step"] for r in recs],
            "losses": [r["loss"] for r in recs],
            "reference": [r["loss"] for r in read_metrics(work / "one")],
            "resumed_at": res.details["resumed_at"] if res else None,
            "killed_after_step": killed_at,
            "killed": sorted(names),
            "killed_pids_alive": [p.pid for p in victims if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            "nodes": {"1": node_id(node1), "2": node_id(node2), "3": node_id(node3)},
            "alive": alive,
            "workers_before": sorted(before.values()),
            "workers_after": sorted(after.values()),
            "samples": samples(run_dir) == samples(work / "one"),
            "reference_s": reference_s,
            "run_s": run_s,
            "kill_to_end_s": time.monotonic() - t_kill,
        }
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()


def serve(work: Path, colocated: bool = False) -> dict:
    import socket

    import openai
    import ray
    from ray import serve as ray_serve
    from ray.cluster_utils import Cluster

    from rayalign.raycluster import ensure_ray
    from rayalign.serve.config import ServeConfig
    from rayalign.serve.server import start, stop

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    # Serve's controller replaces an HTTP proxy that misses 3 readiness checks of 5 s, which a proxy
    # starting on a machine loaded by other tests can do; Serve's processes inherit these from here
    os.environ.update({"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH})
    try:
        os.environ["RAY_ADDRESS"] = cluster.address
        ensure_ray()
        # one HTTP proxy, on the head: every node of this cluster shares 127.0.0.1
        ray_serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(
            model="tiny-random:llama", port=port, app_name="node-loss", default_max_tokens=8, colocate_engine=colocated
        )
        # The ingress (0 CPUs) may be placed on any node; node 2 (the only one with CPUs) joins only
        # once it is on the head, so the node lost holds the engine replica alone (colocated: the one
        # replica, ingress and engine, needs node 2's CPU). `start` runs in a thread meanwhile: Ray
        # starts a node from the main thread only (its SIGTERM handler).
        deployed: dict = {}

        def deploy() -> None:
            try:
                deployed["url"] = start(cfg, ready_timeout_s=150)
            except BaseException as e:  # reported below
                deployed["error"] = repr(e)

        starter = threading.Thread(target=deploy, daemon=True)
        starter.start()
        deadline = time.monotonic() + 120
        while not colocated and not actor_pids("OpenAIIngress"):
            assert starter.is_alive(), f"the app failed before its ingress was placed: {deployed}"
            assert time.monotonic() < deadline, "the ingress was never placed"
            time.sleep(0.25)
        ingress = actor_pids("OpenAIIngress")
        node2 = cluster.add_node(num_cpus=1)
        starter.join(timeout=160)
        assert "url" in deployed, f"the app did not come up: {deployed}"
        url = deployed["url"]
        replica = "OpenAIIngress" if colocated else "EngineServer"
        before = actor_pids(replica)
        victims = node_processes(node2)
        assert before and before <= {p.pid for p in victims}, "the engine replica is not on node 2"
        assert colocated or not ingress & {p.pid for p in victims}, "the ingress is on node 2 too"
        ready_s = time.monotonic() - t0
        # a request queued while no replica is up waits for the replacement: the client waits as
        # long as the endpoint's bound
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        answers: list[tuple[float, object]] = []
        killed: list[float] = []
        stop_at = time.monotonic() + 150

        def recovered() -> bool:
            return bool(killed) and sum(1 for t, s in list(answers) if s == 200 and t > killed[0] + 1) >= 5

        def load(i: int) -> None:
            while time.monotonic() < stop_at and not recovered():
                try:
                    client.completions.create(model=cfg.model, prompt=f"request {i}", max_tokens=8, temperature=0)
                    answers.append((time.monotonic(), 200))
                except openai.APIStatusError as e:
                    shaped = e.status_code != 503 or bool(e.response.headers.get("retry-after"))
                    answers.append((time.monotonic(), e.status_code if shaped else "503 without Retry-After"))
                    time.sleep(0.2)
                except Exception as e:
                    answers.append((time.monotonic(), type(e).__name__))
                    time.sleep(0.2)

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        while sum(1 for _, s in answers if s == 200) < 6:
            assert time.monotonic() < stop_at, f"no load got through: {answers[-5:]}"
            time.sleep(0.1)
        names = sigkill_all(victims)
        killed.append(time.monotonic())
        cluster.remove_node(node2, allow_graceful=False)
        node3 = cluster.add_node(num_cpus=1)
        for t in threads:  # each ends by stop_at plus one client timeout
            t.join(timeout=max(0.0, stop_at + 65 - time.monotonic()))
        after = actor_pids(replica)
        on_node3 = bool(after) and after <= {p.pid for p in node_processes(node3)}
        stop(cfg)
        k = killed[0]
        since = [(round(t - k, 2), s) for t, s in answers if t > k]
        first_ok = next((t for t, s in since if s == 200 and t > 1), None)
        return {
            "killed": sorted(names),
            "killed_pids_alive": [p.pid for p in victims if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            "before": len(answers) - len(since),
            "after": since,
            "statuses": sorted({str(s) for _, s in answers}),
            "first_ok_after_s": first_ok,
            "replica_moved": not before & after and on_node3,
            "ready_s": round(ready_s, 1),
            "run_s": round(time.monotonic() - t0, 1),
        }
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()


def samples(run_dir: Path) -> dict[int, list[int]]:
    """step → sorted row indices all ranks consumed in it (a row repeated within a step counts twice)."""
    by_step: dict[int, list[int]] = {}
    for f in sorted((run_dir / "samples").glob("rank*.jsonl")):
        seen: dict[int, list[int]] = {}
        for line in f.read_text().splitlines():
            s = json.loads(line)
            seen[s["step"]] = [i for g in s["rows"] for i in g]  # a redone step: its last attempt
        for step, rows in seen.items():
            by_step.setdefault(step, []).extend(rows)
    return {k: sorted(v) for k, v in sorted(by_step.items())}


if __name__ == "__main__":
    import shutil
    import tempfile

    job, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    # the cluster's sessions and its address file in a folder of its own: a `ray.init()` elsewhere
    # on this machine must not find (and join) this cluster
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rayalign-nl-", dir="/tmp")
    try:
        out = {
            "train": lambda: train(work, sys.argv[3]),
            "serve": lambda: serve(work, colocated="--colocated" in sys.argv),
        }[job]()
    finally:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    print("RESULT " + json.dumps(out))
