"""Rollout engines for online training and the weight sync from the trainer to them.

`RolloutEngines` is what a training rank sees: an in-process engine (``scaling.workers: 0``) or
the Ray actors (`EngineActor`) the driver started, behind one `generate` / `sync` pair.

Policy versions: version v is the weights after v optimizer updates. `sync` sends a version to
every engine, which stages it (`VersionedEngine.receive`, acknowledged at once, even while a rollout
is generating: actors take it in a concurrency group of its own); a rollout names the version it
must be sampled with and the engine loads that version before it generates — between two generate
calls, never during one — and reports it back with the results. An asynchronous run
(`asynchronous.max_staleness` k) keeps k + 1 versions staged and its rollouts queued ahead of
training; an engine that does not acknowledge a sync within ``sync_timeout`` fails the run with its
name (`SyncTimeout`).

Weight sync after every optimizer step, as built here (CPU):
- in-process: the trainer's state dict (a copy when rollouts run in a background thread);
- Ray: every rank joins FSDP2's full-state-dict gather (DTensor shards → full tensors on rank 0,
  CPU), rank 0 puts the dict in the object store ONCE and every engine actor reads it from there;
  a barrier keeps the other ranks from sampling before the engines have it.

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
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, cast

import torch

from rayalign.generate.engine import Engine, EngineConfig, GenRequest, GenResult, make_engine
from rayalign.models.adapters import PeftConfig
from rayalign.rl.env import EnvConfig


def rollout_seed(seed: int, step: int, row: int) -> int:
    """The sampling seed of one prompt's group: a pure function of the run seed, the step and the
    prompt's row in the prompt set — not of the rank, the engine or the world size — so a resumed
    run samples the very same responses, and the same run on more workers the same ones up to the
    float rounding of another batch shape (the hf engine's `SeededSampler`)."""
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


class VersionedEngine:
    """An engine that samples with a named policy version: `receive` stages a version's weights
    (returns at once, even while a rollout runs), `rollout` loads the version it is asked for before
    it generates — between two generate calls, never during one — and reports the version it used.
    The newest `keep` versions stay staged, so rollouts of an asynchronous run that were queued
    before a newer version arrived still get the weights they were asked for."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.version = -1  # nothing loaded through `rollout` yet: the engine holds its own weights
        self.staged: dict[int, dict[str, torch.Tensor]] = {}
        self.stage_lock = threading.Lock()
        self.engine_lock = threading.Lock()
        self.adapter: PeftConfig | None = None  # LoRA runs: versions are adapter weights only
        self.lora: Any = None  # hf: the engine's model with the same LoRA layers as the trainer's
        self.adapter_name: str | None = None  # vllm: the loaded version's adapter, named per version
        self.adapter_dir: str | None = None  # vllm: where the versions' adapter folders are written
        self.base: dict[str, torch.Tensor] | None = None  # vllm without LoRA: the adapted layers' base weights

    def receive(
        self, state: dict[str, torch.Tensor], version: int, keep: int = 1, adapter: PeftConfig | None = None
    ) -> bool:
        with self.stage_lock:
            self.adapter = adapter
            self.staged[version] = state
            for old in sorted(self.staged)[:-keep]:
                del self.staged[old]
        return True

    def rollout(
        self, requests: list[GenRequest], version: int, env: EnvConfig | None = None, rows: list[dict] | None = None
    ) -> tuple[int, list[Any]]:
        """`GenResult`s of `requests` sampled with policy `version`; with an environment, the
        multi-turn `Episode`s of the prompt `rows` instead (G per request, `rl.env.run_episodes`)."""
        with self.engine_lock:
            if version != self.version:
                with self.stage_lock:
                    state = self.staged.get(version)
                    staged = sorted(self.staged)
                if state is None:
                    raise RuntimeError(
                        f"rollout asks for policy version {version}, but the engine holds {self.version} and has "
                        f"{staged} staged (max_staleness smaller than the queue of rollouts?)"
                    )
                if self.adapter is not None:
                    self.load_adapter(state, version)
                else:
                    load_weights(self.engine, state)
                self.version = version
            if self.adapter_name is not None:  # vllm LoRA: every request names the version's adapter
                requests = [replace(r, adapter=self.adapter_name) for r in requests]
            if env is not None:
                from rayalign.rl.env import run_episodes

                return self.version, run_episodes(self.engine, requests, rows or [], env)
            return self.version, self.engine.generate(requests)

    def load_adapter(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Swap the engine's LoRA weights for `state` (the trainer's trainable tensors, by the
        trainer's names). hf: the first time, the engine's model gets the same LoRA layers in place,
        then their tensors are replaced. vllm built with ``enable_lora``: the tensors become a peft
        adapter folder on this node, loaded by name as ``policy-v<version>`` (a new vLLM adapter id
        per version) and the previous version's adapter is unloaded; the base weights never move.
        vllm without LoRA: the adapter is merged into the adapted layers' base weights here and
        those layers are overwritten in the engine (`load_vllm_merged`)."""
        if getattr(self.engine, "llm", None) is not None:
            cfg = getattr(self.engine, "cfg", None)
            if cfg is not None and not cfg.vllm_kwargs.get("enable_lora"):
                self.load_vllm_merged(state)
            else:
                self.load_vllm_adapter(state, version)
            return
        model = getattr(self.engine, "model", None)
        if model is None:
            raise TypeError(f"{type(self.engine).__name__}: adapter-only weight sync is built for hf and vllm engines")
        if self.lora is None:
            from rayalign.models.adapters import apply_peft

            assert self.adapter is not None
            self.lora = apply_peft(model, self.adapter)  # injects the LoRA layers into `model` itself
            self.lora.eval()
        with torch.no_grad():
            result = self.lora.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"adapter sync: the engine's model has no {result.unexpected_keys[:3]}")

    def load_vllm_adapter(self, state: dict[str, torch.Tensor], version: int) -> None:
        from safetensors.torch import save_file

        from rayalign.models.adapters import lora_config

        assert self.adapter is not None
        if self.adapter_dir is None:
            self.adapter_dir = tempfile.mkdtemp(prefix="rayalign-policy-lora-")
        name = f"policy-v{version}"
        folder = os.path.join(self.adapter_dir, name)
        os.makedirs(folder, exist_ok=True)
        # peft's file names: the trainer's parameter names without the adapter name ("default")
        tensors = {_PEFT_NAME.sub(r".\1.", k): v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
        lora_config(self.adapter).save_pretrained(folder)
        old = self.adapter_name
        self.engine.load_adapter(name, folder)  # type: ignore[attr-defined]  # a VLLMEngine
        self.adapter_name = name
        if old is not None:
            self.engine.unload_adapter(old)  # type: ignore[attr-defined]
            shutil.rmtree(os.path.join(self.adapter_dir, old), ignore_errors=True)

    def load_vllm_merged(self, state: dict[str, torch.Tensor]) -> None:
        """The policy's adapted layers, W + B·A·alpha/r, into the vLLM engine in place (with the
        unadapted parts of the layers vLLM fuses them into, e.g. k_proj beside q_proj and v_proj).
        W is the checkpoint's base weight of each of these layers, read once from the engine's model
        folder and kept here (fp32), so each version is merged from the base, never onto the last."""
        from rayalign.models.loader import parse_dtype, resolve_model_path
        from rayalign.rl.vllm_weights import base_weights, fused_siblings, lora_modules, merge_lora, update_vllm

        assert self.adapter is not None
        cfg = self.engine.cfg  # type: ignore[attr-defined]  # a VLLMEngine
        if self.base is None:
            packed = self.engine.collective_rpc("rayalign_packed_modules")[0]  # type: ignore[attr-defined]
            layers = fused_siblings(sorted(lora_modules(state)), packed)
            self.base = base_weights(resolve_model_path(cfg.model), layers)
        merged = merge_lora(self.base, state, self.adapter.alpha / self.adapter.r, parse_dtype(cfg.dtype))
        update_vllm(self.engine, merged)

    def close(self) -> None:
        self.engine.close()
        if self.adapter_dir is not None:
            shutil.rmtree(self.adapter_dir, ignore_errors=True)


_PEFT_NAME = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.default\.")


class EngineActor(VersionedEngine):
    """One rollout engine in a Ray actor: build it with `engine_actor_class` (its ``sync``
    concurrency group lets `receive` run while a rollout is generating)."""

    def __init__(self, cfg: EngineConfig, threads: int = 1):
        torch.set_num_threads(threads)  # one thread per actor: more is much slower under contention
        super().__init__(make_engine(cfg))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with self.engine_lock:
            return self.engine.generate(requests)

    def load_weights(self, state: dict[str, torch.Tensor]) -> bool:
        with self.engine_lock:
            load_weights(self.engine, state)
            self.version = -1
        return True


def engine_actor_class(num_cpus: float, num_gpus: float = 0.0):
    """`EngineActor` as a Ray actor class: generate / rollout run one at a time in submission order
    (the default group), `receive` in its own ``sync`` group beside them."""
    import ray

    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "concurrency_groups": {"sync": 1}}
    return ray.remote(**options)(EngineActor)


def adapter_state_dict(model, distributed: bool) -> dict[str, torch.Tensor]:
    """The trainable (adapter) tensors only, whole (gathered from FSDP2 shards on every rank)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = getattr(p, "full_tensor", None) if distributed else None
            out[name] = (full() if full is not None else p).detach().cpu()
    return out


def full_state_dict(model, distributed: bool) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU: gathered from every rank's FSDP2 shards onto rank 0
    (other ranks get an empty dict; every rank must call it), or the plain state dict."""
    if not distributed:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, torch.Tensor], state)  # a model's state dict: tensors only


@dataclass
class Submitted:
    """Rollouts on their way: Ray refs per actor (with the request positions they cover) or a future
    of the in-process engine."""

    parts: list[tuple[Any, list[int]]]
    n: int


class SyncTimeout(RuntimeError):
    """A weight sync that an engine did not acknowledge in time (the engine is named)."""


class RolloutEngines:
    """A rank's rollout engines: `actors` (Ray handles of `engine_actor_class`) or one in-process
    engine. ``keep`` policy versions stay staged on each engine (max_staleness + 1); with
    ``background`` the in-process engine generates in a thread of its own, beside training."""

    def __init__(
        self,
        cfg: EngineConfig,
        actors: list[Any] | None = None,
        keep: int = 1,
        background: bool = False,
        sync_timeout: float = 600.0,
        adapter: PeftConfig | None = None,
    ):
        self.actors = list(actors or [])
        self.adapter = adapter if adapter is not None and adapter.method != "none" else None
        self.bytes_sent = 0  # weight bytes handed to the engines (per engine), all syncs
        self.keep, self.sync_timeout = keep, sync_timeout
        self.host = None if self.actors else VersionedEngine(make_engine(cfg))
        self.local = self.host.engine if self.host is not None else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollout") if self.host and background else None
        self.version = -1  # the newest version sent

    def submit(
        self,
        requests: list[GenRequest],
        slots: list[int],
        version: int,
        env: EnvConfig | None = None,
        rows: list[dict] | None = None,
    ) -> Submitted:
        """Start sampling `requests` with policy `version` (sent before by `sync`); request i goes to
        actor ``slots[i] % len(actors)`` (its global position in the step, so ranks spread their
        prompts over all engines). Returns at once except on the in-process engine without
        background thread, which samples here."""
        every = list(range(len(requests)))
        if self.host is not None:
            if self.pool is not None:
                return Submitted(
                    [(self.pool.submit(self.host.rollout, requests, version, env, rows), every)], len(every)
                )
            return Submitted([(self.host.rollout(requests, version, env, rows), every)], len(every))
        by_actor: dict[int, list[int]] = {}
        for i, slot in enumerate(slots):
            by_actor.setdefault(slot % len(self.actors), []).append(i)
        parts = []
        for a, ix in by_actor.items():
            mine = [rows[i] for i in ix] if rows is not None else None
            parts.append((self.actors[a].rollout.remote([requests[i] for i in ix], version, env, mine), ix))
        return Submitted(parts, len(requests))

    def collect(self, sub: Submitted) -> tuple[list[int], list[Any]]:
        """The policy version each request was sampled with, and the results (`GenResult`s, or
        lists of `Episode`s), in request order."""
        versions: list[int] = [-1] * sub.n
        out: list[Any] = [None] * sub.n
        for handle, ix in sub.parts:
            if isinstance(handle, tuple):
                version, results = handle
            elif isinstance(handle, Future):
                version, results = handle.result()
            else:
                import ray

                version, results = ray.get(handle)
            for i, res in zip(ix, results, strict=True):
                versions[i], out[i] = version, res
        return versions, out

    def generate(self, requests: list[GenRequest], slots: list[int]) -> list[GenResult]:
        """Sample with the newest version sent (blocking)."""
        return self.collect(self.submit(requests, slots, self.version))[1]

    def sync(self, model, rank: int, distributed: bool, version: int | None = None) -> None:
        """Send the trainer's current weights to every engine as policy `version` (default: the
        next one). Engines stage them and load them before their next rollout of that version; an
        engine that does not acknowledge within ``sync_timeout`` seconds raises `SyncTimeout`
        naming it. Every rank calls this (FSDP2's gather), only rank 0 sends."""
        version = self.version + 1 if version is None else version
        if self.adapter is not None:  # LoRA: the adapter's tensors only, the base never moves
            state = adapter_state_dict(model, distributed)
        else:
            state = full_state_dict(model, distributed)
        self.bytes_sent += sum(t.numel() * t.element_size() for t in state.values())
        if self.host is not None:
            if self.pool is not None or self.adapter is not None:  # the trainer goes on: send a copy
                state = {k: v.detach().clone() for k, v in state.items()}
            self.host.receive(state, version, self.keep, self.adapter)
        elif rank == 0:
            import ray

            ref = ray.put(state)  # once; each actor reads the same object
            acks = [
                a.receive.options(concurrency_group="sync").remote(ref, version, self.keep, self.adapter)
                for a in self.actors
            ]
            ready, _ = ray.wait(acks, num_returns=len(acks), timeout=self.sync_timeout)
            late = [i for i, ack in enumerate(acks) if ack not in ready]
            if late:
                names = ", ".join(f"engine {i} (actor {self.actors[i]._actor_id.hex()})" for i in late)
                raise SyncTimeout(
                    f"weight sync of policy version {version} not acknowledged within {self.sync_timeout:g} s by {names}"
                    " (engine stuck or dead; raise asynchronous.sync_timeout if it is only slow)"
                )
            ray.get(ready)
        self.version = version
        if distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.host is not None:
            self.host.close()
