"""How trainer weights reach vLLM's workers, without starting vLLM (tests/rl/test_vllm_weights.py
runs the real engine): `load_into_vllm` writes one safetensors file in shared memory, or packs the
tensors into the RPC message when shared memory has no room; `WeightReceiver` — here mixed into a
runner that keeps what `reload_weights` is given — gets every tensor back bit for bit either way,
tied weights and views of one storage included, and the file is gone afterwards."""

from __future__ import annotations

import os

import torch

from rayalign.rl import vllm_weights


class Runner:
    def __init__(self) -> None:
        self.loaded: dict[str, torch.Tensor] = {}

    def reload_weights(self, weights_iterator) -> None:
        self.loaded = {name: t.clone() for name, t in weights_iterator}


class Worker(vllm_weights.WeightReceiver):
    def __init__(self) -> None:
        self.model_runner = Runner()


class Engine:
    """`collective_rpc` as vLLM's engine runs it: the named method on every worker, here one."""

    def __init__(self) -> None:
        self.worker = Worker()
        self.calls: list[str] = []

    def collective_rpc(self, method: str, args: tuple) -> list:
        self.calls.append(method)
        return [getattr(self.worker, method)(*args)]


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 4, generator=g)
    fused = torch.randn(6, 4, generator=g)
    return {
        "embed_tokens.weight": emb,
        "lm_head.weight": emb,  # tied to the embeddings: one storage
        "q.weight": fused[:3],  # two views of one storage
        "k.weight": fused[3:],
        "norm.weight": torch.ones(4, dtype=torch.bfloat16),
        "empty": torch.empty(0),
    }


def shm_files() -> set[str]:
    return {f for f in os.listdir(vllm_weights.SHARED_MEMORY) if f.startswith("rayalign-weights-")}


def check(engine: Engine, sent: dict[str, torch.Tensor]) -> None:
    got = engine.worker.model_runner.loaded
    assert sorted(got) == sorted(sent)  # by name: the file keeps its own order
    for name, t in sent.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name


def test_weights_travel_through_a_shared_memory_file_that_is_removed():
    before = shm_files()
    engine, sent = Engine(), state()
    vllm_weights.load_into_vllm(engine, sent)
    assert engine.calls == ["rayalign_load_file"]
    check(engine, sent)
    assert shm_files() == before


def test_without_room_in_shared_memory_they_travel_in_the_message(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_weights, "SHARED_MEMORY", str(tmp_path / "missing"))
    engine, sent = Engine(), state()
    vllm_weights.load_into_vllm(engine, sent)
    assert engine.calls == ["rayalign_load_weights"]
    check(engine, sent)
    # a folder too small for the weights counts as no room
    assert vllm_weights.shared_folder(1 << 60) is None
