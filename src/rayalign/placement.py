"""GPU bookings for the actors and tasks that host an inference engine.

A vLLM engine with `tensor_parallel_size` N > 1 runs its N workers as Ray actors, one GPU each. If
the actor hosting the engine held N GPUs itself and vLLM then reserved its own N-GPU placement
group, the engine would book 2N GPUs and use N. So such a host is placed the way a Serve replica
is (`rayalign.serve.app.engine_placement`): one STRICT_PACK placement group of N one-GPU bundles
on one node, the host actor in bundle 0 holding its CPUs and no GPU, and vLLM's Ray executor
placing its workers in the group's bundles (it picks up the placement group of the actor it runs
in). A pending placement group is a resource demand the autoscaler sees, so a GPU node is started
for it like for any actor.

An engine on one GPU (or the HF backend) needs no group: its host simply holds the GPU. Nor does
an engine whose tensor-parallel workers are vLLM's own subprocesses
(`vllm_kwargs: {distributed_executor_backend: mp}`): they use the GPUs its host holds, so there
the host asks for all `tensor_parallel_size` GPUs itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from rayalign.config import ConfigError


def engine_gpus(engines: Iterable[Any]) -> int:
    """GPUs of the widest engine among `engines` whose tensor-parallel workers are Ray actors (1
    when none is): the size of the placement group its host needs.

    Only vLLM shards a model over GPUs (the HF backend ignores `tensor_parallel_size`), and only its
    Ray executor (the default for tensor_parallel_size > 1 here) places workers in a group."""
    return max(
        [
            e.tensor_parallel_size
            for e in engines
            if e is not None
            and e.backend == "vllm"
            and e.vllm_kwargs.get("distributed_executor_backend", "ray") == "ray"
        ]
        or [1]
    )


def engine_bundles(tp: int, num_cpus: float, resources: dict[str, float] | None = None) -> list[dict[str, float]]:
    """Placement-group bundles for a `tp`-GPU engine: its host's CPUs (and custom resources) with
    the first GPU, then one GPU per further worker."""
    first = {"CPU": float(num_cpus), "GPU": 1.0, **(resources or {})}
    return [first] + [{"GPU": 1.0} for _ in range(tp - 1)]


def check_host_gpus(num_gpus: float, tp: int, field: str) -> None:
    """A host of a `tp`-GPU engine asks for no GPUs itself or exactly `tp` (the engine's own):
    anything else would book GPUs the engine never uses, or too few for it."""
    if tp > 1 and num_gpus not in (0, tp):
        raise ConfigError(
            f"{field}: {num_gpus:g} GPU(s) for an engine with tensor_parallel_size {tp}; set it to {tp} "
            f"(or 0): the engine's placement group books its {tp} GPUs, the host none besides"
        )


class TPActorOptions:
    """Ray options for the actors of a pool that host a `tp`-GPU engine: each actor start gets a
    fresh placement group of `engine_bundles(tp, ...)`, the actor in bundle 0 (Ray Data's
    `ray_remote_args_fn`). `release()` removes the groups when the stage is done, so its GPUs are
    free for the next stage of the same driver.

    Ray Data also calls this function outside actor starts (its memory issue detector reads the
    operator's options now and then); a group made for such a call would reserve `tp` GPUs that no
    actor ever uses. Only a call from the actor pool's start path (`_start_actor`, Ray 2.60) makes a
    group; other calls get the options without one. tests/cluster/test_autoscaling.py
    checks on Ray's autoscaler that a pool of one such actor books exactly `tp` GPUs.
    """

    def __init__(self, tp: int, num_cpus: float, resources: dict[str, float] | None = None):
        self.tp, self.num_cpus, self.resources = tp, num_cpus, dict(resources or {})
        self.groups: list[Any] = []

    def __call__(self) -> dict[str, Any]:
        import sys

        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": 0, "resources": dict(self.resources)}
        frame: FrameType | None = sys._getframe(1)
        callers: set[str] = set()
        for _ in range(8):  # Ray Data's start path: _start_actor -> _merge_ray_remote_args -> (wrappers) -> here
            if frame is None:
                break
            callers.add(frame.f_code.co_name)
            frame = frame.f_back
        if "_start_actor" not in callers:
            return options
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group(engine_bundles(self.tp, self.num_cpus, self.resources), strategy="STRICT_PACK")
        self.groups.append(group)
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
        return options

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        while self.groups:
            remove_placement_group(self.groups.pop())


def tp_actor_options(tp: int, num_cpus: float, resources: dict[str, float] | None = None) -> TPActorOptions:
    """The Ray options of the engine host actors of a pool (see `TPActorOptions`)."""
    return TPActorOptions(tp, num_cpus, resources)


def run_on_gpus(fn: Callable, args: tuple, num_gpus: float, tp: int, num_cpus: float = 1) -> Any:
    """`fn(*args)` in a Ray task that can host an engine: a `tp`-GPU placement group for a
    tensor-parallel one (removed afterwards), else a task holding `num_gpus`."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if tp <= 1:
        return ray.get(ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(fn).remote(*args))
    group = placement_group(engine_bundles(tp, num_cpus), strategy="STRICT_PACK")
    try:
        strategy = PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
        task = ray.remote(num_gpus=0, num_cpus=num_cpus, scheduling_strategy=strategy)(fn)
        return ray.get(task.remote(*args))
    finally:
        remove_placement_group(group)
