"""Jobs that tests/cluster/test_autoscaling.py runs as drivers of its autoscaling cluster, each in a
fresh interpreter (`RAY_ADDRESS` set): a real rayalign stage, then what Ray's state says about the
nodes, printed as one JSON line.

    python tests/cluster/autoscaling_jobs.py cpu-stage|gpu-stage|tp2-actor|node-kill WORK_DIR
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "rayjobs" / "data" / "tiny"
sys.path.insert(0, str(REPO / "tests"))  # shard_kill_helpers


def nodes() -> list[dict]:
    import ray

    return [{"alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]


def cpu_stage(work: Path) -> dict:
    """`prepare` (tokenise + pack chats): CPU only."""
    from rayalign.stages import run_stage

    cfg = {"kind": "chat", "inputs": [str(TINY / "chat.jsonl")], "output": str(work / "prepared"),
           "model": "tiny-random:llama", "max_length": 256, "seq_len": 256,
           "pool": {"workers": 1, "num_cpus": 1, "shard_rows": 64}}  # fmt: skip
    result = run_stage("prepare", data=cfg)
    return {"ok": result.counts.ok, "nodes": nodes()}


def gpu_stage(work: Path) -> dict:
    """`reference` with one GPU per actor: on a node without CUDA the pass runs on its CPU."""
    from rayalign.stages import run_stage

    cfg = {"inputs": [str(TINY / "pairs.jsonl")], "output": str(work / "reference"), "model": "tiny-random:llama",
           "max_length": 256, "batch_size": 8, "pool": {"workers": 1, "num_cpus": 1, "num_gpus": 1}}  # fmt: skip
    result = run_stage("reference", data=cfg)
    return {"ok": result.counts.ok, "nodes": nodes()}


class Observer:
    """A generation actor's processor that records where it runs instead of building an engine
    (a tensor-parallel vLLM engine cannot start without GPUs; this is about what Ray books)."""

    def __init__(self, out: str):
        from rayalign.data.schemas import SCHEMAS

        self.out = out
        self.output_schema = SCHEMAS["prompts"]

    def process(self, rows: list[dict]):
        import ray

        from rayalign.data.shards import ProcessResult

        group = ray.util.get_current_placement_group()
        seen = {
            "assigned": ray.get_runtime_context().get_assigned_resources(),
            "bundles": group.bundle_specs if group else None,
            "gpus_free": ray.available_resources().get("GPU", 0.0),
            "gpus_total": ray.cluster_resources().get("GPU", 0.0),
        }
        Path(self.out).write_text(json.dumps(seen))
        return ProcessResult(rows)


def tp2_actor(work: Path) -> dict:
    """A generation stage's actor pool for an engine with tensor_parallel_size 2, on the stage's own
    placement (`GenStageConfig.actor_options`) and the sharded runner."""
    from rayalign.data.shards import run_sharded
    from rayalign.generate.common import GenStageConfig

    cfg = GenStageConfig(
        inputs=[str(TINY / "prompts.jsonl")],
        output=str(work / "tp2"),
        engine={"backend": "vllm", "model": "tiny-random:llama", "tensor_parallel_size": 2},
        pool={"workers": 1, "num_cpus": 1, "num_gpus": 2, "shard_rows": 1000},
    )
    seen = work / "observed.json"
    placement = cfg.actor_options()
    assert placement is not None
    run_sharded(
        "tp2", cfg.inputs, cfg.output, lambda: Observer(str(seen)), kind="prompts", pool=cfg.pool,
        config_hash="tp2", actor_options=placement,
    )  # fmt: skip
    groups = len(placement.groups)
    placement.release()
    import time

    import ray

    deadline = time.time() + 20  # the freed bundles reach the resource view within a few seconds
    while (
        ray.available_resources().get("GPU", 0.0) < ray.cluster_resources().get("GPU", 0.0) and time.time() < deadline
    ):
        time.sleep(0.5)
    return {
        "observed": json.loads(seen.read_text()),
        "groups": groups,
        "gpus_free_after": ray.available_resources().get("GPU", 0.0),
        "nodes": nodes(),
    }


class SlowEcho:
    """A prompts stage's processor that passes its rows through, slowly (so a kill lands mid-stage),
    and appends the node it ran on and the ids it wrote to `log`, one JSON line per shard."""

    def __init__(self, log: str, delay: float):
        from rayalign.data.schemas import SCHEMAS

        self.log, self.delay = log, delay
        self.output_schema = SCHEMAS["prompts"]

    def process(self, rows: list[dict]):
        import time

        import ray

        from rayalign.data.shards import ProcessResult

        time.sleep(self.delay)
        with open(self.log, "a") as fh:
            fh.write(json.dumps({"node": ray.get_runtime_context().get_node_id(), "ids": [r["id"] for r in rows]}))
            fh.write("\n")
        return ProcessResult(rows)


NODE_KILL_ROWS, NODE_KILL_SHARD_ROWS, NODE_KILL_BAD_EVERY = 120, 5, 11


def node_kill(work: Path) -> dict:
    """A sharded prompts stage on one actor; once 3 shards are committed, every process of the node
    that actor runs on (its raylet, its workers, its agents: the processes whose environment names
    that fake node's id and this cluster's temp dir) is SIGKILLed at once."""
    import os

    from rayalign.data.shards import PoolConfig, run_sharded
    from shard_kill_helpers import pids_with_env, run_and_kill

    src, out, log = work / "in.jsonl", work / "out", work / "batches.jsonl"
    with src.open("w") as fh:
        for i in range(NODE_KILL_ROWS):
            bad = i % NODE_KILL_BAD_EVERY == 0
            fh.write(f'{{"id": "p{i}", "prompt": ' + ("\n" if bad else json.dumps(f"Question {i}?") + "}\n"))
    killed: dict = {}

    def node_processes() -> list[int]:
        if not log.exists() or not log.read_text().strip():
            return []  # the actor has not run a shard yet: its node is not known
        node = json.loads(log.read_text().splitlines()[0])["node"]
        pids = pids_with_env(f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node}", f"RAY_TMPDIR={os.environ['RAY_TMPDIR']}")
        names = set()
        for pid in pids:
            with contextlib.suppress(OSError):  # a process may exit meanwhile
                names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        if pids:
            import ray

            alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            killed.update(node=node, names=sorted(names), lines=len(log.read_text().splitlines()), alive=alive)
        return pids

    manifest, pids, done_at_kill = run_and_kill(
        lambda: run_sharded(
            "node-kill", [str(src)], str(out), lambda: SlowEcho(str(log), 0.4), kind="prompts",
            pool=PoolConfig(workers=1, num_cpus=1, shard_rows=NODE_KILL_SHARD_ROWS), config_hash="node-kill",
        ),
        out, after_shards=3, start_s=60, finish_s=100, victims=node_processes,
    )  # fmt: skip
    import ray

    batches = [json.loads(x) for x in log.read_text().splitlines()]
    return {
        "counts": manifest.counts.to_json(),
        "shards": len(manifest.shards),
        "done_at_kill": done_at_kill,
        "killed": {**killed, "pids": len(pids)},
        "batch_nodes": [b["node"] for b in batches],
        "nodes": [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()],
    }


if __name__ == "__main__":
    job, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    result = {"cpu-stage": cpu_stage, "gpu-stage": gpu_stage, "tp2-actor": tp2_actor, "node-kill": node_kill}[job](work)
    print("RESULT " + json.dumps(result))
