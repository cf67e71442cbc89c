"""The `sft` and `pretrain` stages: (prepare raw inputs if needed) → launch the train loop.

    rayalign sft rayjobs/configs/sft.yaml
    rayalign pretrain rayjobs/configs/pretrain.yaml max_steps=20

`data.path` names a prepared (packed) dataset; or `data.inputs` lists raw files, which the stage
tokenises and packs itself into `<output_dir>/prepared` with `rayalign prepare` (resumable).
"""

from __future__ import annotations

from typing import Literal

from rayalign.data.dataset import ensure_dataset
from rayalign.results import StageResult
from rayalign.train.config import ObjectiveSpec, TrainConfig


class SFTConfig(TrainConfig):
    objective: ObjectiveSpec = ObjectiveSpec(name="sft")  # the loss: sft (loss on assistant tokens)


class PretrainConfig(TrainConfig):
    objective: ObjectiveSpec = ObjectiveSpec(name="pretrain")  # the loss: pretrain (loss on every token)


def ensure_prepared(cfg: TrainConfig, kind: Literal["corpus", "chat"]) -> TrainConfig:
    """Return cfg with data.path set, running `prepare` on data.inputs when no path was given."""
    d = cfg.data
    path = ensure_dataset(
        kind,
        path=d.path,
        inputs=d.inputs,
        output_dir=cfg.output_dir,
        model=cfg.model,
        max_length=d.max_length,
        seq_len=d.seq_len,
        overlength=d.overlength,
        pool=d.pool,
    )
    return cfg.model_copy(update={"data": d.model_copy(update={"path": path})})


def run_sft(cfg: SFTConfig) -> StageResult:
    from rayalign.train.launcher import launch

    return launch(ensure_prepared(cfg, "chat"))


def run_pretrain(cfg: PretrainConfig) -> StageResult:
    from rayalign.train.launcher import launch

    return launch(ensure_prepared(cfg, "corpus"))
