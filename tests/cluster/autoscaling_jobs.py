"""Jobs that tests/cluster/test_autoscaling.py runs as drivers of its autoscaling cluster, each in a
fresh interpreter (`RAY_ADDRESS` set): a real rayalign stage, then what Ray's state says about the
nodes, printed as one JSON line.

    python tests/cluster/autoscaling_jobs.py cpu-stage|gpu-stage|tp2-actor WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "rayjobs" / "data" / "tiny"


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


if __name__ == "__main__":
    job, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    result = {"cpu-stage": cpu_stage, "gpu-stage": gpu_stage, "tp2-actor": tp2_actor}[job](work)
    print("RESULT " + json.dumps(result))
