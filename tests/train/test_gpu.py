"""GPU only: bf16 mixed precision on one CUDA device tracks the fp32 CPU run of the same config."""

from __future__ import annotations

import pytest
from train_helpers import base_config

from rayalign.train.config import TrainConfig
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics


@pytest.mark.gpu
def test_bf16_gpu_run_tracks_fp32(tmp_path, chat_packed, monkeypatch):
    gpu = launch(TrainConfig.model_validate(base_config(tmp_path / "gpu", chat_packed, max_steps=3)))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cpu = launch(TrainConfig.model_validate(base_config(tmp_path / "cpu", chat_packed, max_steps=3)))
    a = [r["loss"] for r in read_metrics(tmp_path / "gpu")]
    b = [r["loss"] for r in read_metrics(tmp_path / "cpu")]
    assert gpu["steps"] == cpu["steps"] == 3
    assert a == pytest.approx(b, abs=0.05)  # bf16 matmuls: a few hundredths on a loss of ~10.8
