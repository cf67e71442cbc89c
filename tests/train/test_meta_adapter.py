"""Adapter runs on 2 gloo workers load the base model sharded (meta device + FSDP2 + safetensors fill).

Each rank builds the base on the meta device (zero-memory stubs while the adapter is added from the
seeded generator), shards it with FSDP2 and reads only its own rows of the base weights. Checked against one process holding the
whole model: the base shards equal the files, the adapter starts from the same values, and the losses
of the first steps (2 workers × 1 micro-batch of 1 row vs 1 process × 2 micro-batches) agree ≤ 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from spawn_helpers import spawn_trainers
from train_helpers import base_config

from rayalign.train.metrics import read_metrics

STEPS = 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["lora", "aligner"])
def test_adapter_run_on_two_workers_loads_base_sharded_and_matches_one_process(tmp_path, chat_packed, method):
    from rayalign.train.trainer import train_loop

    peft = {"method": method, "r": 4} if method == "lora" else {"method": method, "tokens": 2, "start_layer": 0}
    common = dict(max_steps=STEPS, data={"shuffle": False}, peft=peft, torch_threads=1, optim={"lr": 1e-2})
    one = tmp_path / "one"
    train_loop(base_config(one, chat_packed, micro_batch_size=1, grad_accum=2, **common))
    two = tmp_path / "two"
    cfg = base_config(two, chat_packed, micro_batch_size=1, grad_accum=1, **common)
    held = spawn_trainers(cfg, 2, two)

    want = [r["loss"] for r in read_metrics(one)]
    got = [r["loss"] for r in read_metrics(two)]
    assert len(got) == STEPS and got == pytest.approx(want, abs=1e-5), (got, want)
    assert want[1] != want[0]  # the adapter trains: step 2 sees the updated adapter
    # each rank holds about half of the base (dim-0 shards; odd sizes round up on rank 0), never the whole
    for h in held:
        assert h["base_local"] <= 0.5 * h["base_global"] + 4096
    assert held[0]["base_local"] + held[1]["base_local"] == held[0]["base_global"]
    # the adapter's starting values are the single process's (same seed, same construction order)
    from rayalign.models.adapters import apply_peft
    from rayalign.models.loader import load_model
    from rayalign.train.config import TrainConfig
    from rayalign.train.loop import seed_everything

    run_cfg = TrainConfig.model_validate(cfg)
    seed_everything(run_cfg.seed)
    ref = apply_peft(load_model(run_cfg.model, dtype="fp32", attn_implementation="sdpa"), run_cfg.peft)
    start = {n: p.detach().flatten()[:8].tolist() for n, p in ref.named_parameters() if p.requires_grad}
    assert held[0]["adapter"].keys() == start.keys() and held[1]["adapter"] == held[0]["adapter"]
    for name, values in start.items():
        assert torch.allclose(torch.tensor(held[0]["adapter"][name]), torch.tensor(values)), name
