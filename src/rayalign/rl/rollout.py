"""Rollout engines for online training and the weight sync from the trainer to them.

`RolloutEngines` is what a training rank sees: an in-process engine (``scaling.workers: 0``) or
the Ray actors (`EngineActor`) the driver started, behind one `generate` / `sync` pair.

Weight sync after every optimizer step, as built here (CPU):
- in-process: the trainer's state dict is loaded into the engine's model (`load_state_dict`);
- Ray: every rank joins FSDP2's full-state-dict gather (DTensor shards → full tensors on rank 0,
  CPU), rank 0 puts the dict in the object store ONCE and every engine actor loads it from there;
  a barrier keeps the other ranks from sampling with the old weights.

A vllm engine takes the dict through vLLM's ``collective_rpc`` into a worker extension that calls
the workers' in-place ``reload_weights`` (`rl.vllm_weights`); tested on CPU against the hf engine.

On GPUs the object store round trip (and a CPU copy of the model) is the wrong tool for large
models: the usual path is an NCCL group spanning the trainer's rank 0 and the engines' workers,
broadcasting each gathered tensor straight into vLLM's model (vLLM's NCCL weight transfer:
``weight_transfer_config``, ``init_weight_transfer_engine`` / ``update_weights``). That path is NOT
built or tested here (no GPU on this project's test machine).
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

import torch

from rayalign.generate.engine import Engine, EngineConfig, GenRequest, GenResult, make_engine


def rollout_seed(seed: int, step: int, row: int) -> int:
    """The sampling seed of one prompt's group: a pure function of the run seed, the step and the
    prompt's row in the prompt set — not of the rank, the engine or the world size — so a resumed
    run, or the same run on more workers, samples the very same responses."""
    digest = hashlib.sha256(f"{seed}:{step}:{row}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def load_weights(engine: Engine, state: dict[str, torch.Tensor]) -> None:
    """Replace an engine's weights in place with a full state dict (same architecture): an hf
    engine's model directly, a vllm engine's workers through `rl.vllm_weights`."""
    if getattr(engine, "llm", None) is not None:
        from rayalign.rl.vllm_weights import load_into_vllm

        load_into_vllm(engine, state)
        return
    model = getattr(engine, "model", None)
    if model is None:
        raise TypeError(f"{type(engine).__name__} cannot load weights in place (hf and vllm engines only)")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


class EngineActor:
    """One rollout engine in a Ray actor (`ray.remote(EngineActor)`, built by the driver)."""

    def __init__(self, cfg: EngineConfig, threads: int = 1):
        torch.set_num_threads(threads)  # one thread per actor: more is much slower under contention
        self.engine = make_engine(cfg)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return self.engine.generate(requests)

    def load_weights(self, state: dict[str, torch.Tensor]) -> bool:
        load_weights(self.engine, state)
        return True

    def close(self) -> None:
        self.engine.close()


def full_state_dict(model, distributed: bool) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU: gathered from every rank's FSDP2 shards onto rank 0
    (other ranks get an empty dict; every rank must call it), or the plain state dict."""
    if not distributed:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, torch.Tensor], state)  # a model's state dict: tensors only


class RolloutEngines:
    """A rank's rollout engines: `actors` (Ray handles of `EngineActor`) or one in-process engine."""

    def __init__(self, cfg: EngineConfig, actors: list[Any] | None = None):
        self.actors = list(actors or [])
        self.local = None if self.actors else make_engine(cfg)

    def generate(self, requests: list[GenRequest], slots: list[int]) -> list[GenResult]:
        """Results in request order; request i goes to actor ``slots[i] % len(actors)`` (its global
        position in the step, so ranks spread their prompts over all engines)."""
        if self.local is not None:
            return self.local.generate(requests)
        import ray

        by_actor: dict[int, list[int]] = {}
        for i, slot in enumerate(slots):
            by_actor.setdefault(slot % len(self.actors), []).append(i)
        refs = {a: self.actors[a].generate.remote([requests[i] for i in ix]) for a, ix in by_actor.items()}
        out: list[GenResult | None] = [None] * len(requests)
        for a, ix in by_actor.items():
            for i, res in zip(ix, ray.get(refs[a]), strict=True):
                out[i] = res
        return out  # type: ignore[return-value]  # every slot filled above

    def sync(self, model, rank: int, distributed: bool) -> None:
        """Give every engine the trainer's current weights (see the module docstring)."""
        state = full_state_dict(model, distributed)
        if self.local is not None:
            load_weights(self.local, state)
        elif rank == 0:
            import ray

            ref = ray.put(state)  # once; each actor reads the same object
            ray.get([a.load_weights.remote(ref) for a in self.actors])
        if distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
