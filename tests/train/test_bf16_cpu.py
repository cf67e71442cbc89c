"""bf16 mixed precision on CPU (`dtype: bf16`): one process (autocast) and two FSDP2 ranks over gloo
(bf16 gathers, fp32 gradient reduction) track the fp32 run, while fp32 master weights stay fp32."""

from __future__ import annotations

import pytest
import torch
from spawn_helpers import spawn_trainers
from train_helpers import base_config

from rayalign.train.metrics import read_metrics
from rayalign.train.trainer import Trainer, train_loop


def _losses(folder) -> list[float]:
    return [r["loss"] for r in read_metrics(folder)]


@pytest.mark.timeout(300)
def test_bf16_on_cpu_tracks_fp32_in_one_process_and_on_two_fsdp2_ranks(tmp_path, chat_packed):
    from rayalign.train.config import TrainConfig

    common = dict(max_steps=2, data={"shuffle": False}, torch_threads=1, grad_accum=2)
    train_loop(base_config(tmp_path / "fp32", chat_packed, dtype="fp32", **common))
    bf16_cfg = TrainConfig.model_validate(base_config(tmp_path / "bf16", chat_packed, dtype="bf16", **common))
    trainer = Trainer(bf16_cfg)
    assert trainer.bf16 and trainer.autocast.fast_dtype == torch.bfloat16
    trainer.train()
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}  # master weights
    two = tmp_path / "two"
    spawn_trainers(base_config(two, chat_packed, dtype="bf16", **{**common, "grad_accum": 1}), 2, two)

    fp32, bf16, sharded = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16"), _losses(two)
    assert len(fp32) == len(bf16) == len(sharded) == 2
    # bf16 matmuls move the loss (~10.4 here) by thousandths to hundredths, never more
    assert bf16 == pytest.approx(fp32, abs=0.05) and sharded == pytest.approx(fp32, abs=0.05)
    assert bf16 != fp32 and sharded != fp32  # the low precision really ran
