"""Typed configuration of a training run; each piece owns its section.

A run folder (`output_dir`) holds: `metrics.jsonl`, `checkpoints/step-NNNNNN/{model,state}`,
`final/` (the last model as a Hugging Face folder), `prepared/` when the stage tokenised raw
inputs itself, and `ray/` (Ray Train's own copy of reported checkpoints) when run on Ray.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayalign.config import Cfg, DType
from rayalign.data.shards import PoolConfig
from rayalign.models.adapters import PeftConfig


class ObjectiveSpec(BaseModel):
    """`objective: {name: sft}`; any further keys go to the objective's factory as kwargs."""

    model_config = ConfigDict(extra="allow")
    name: str = "sft"  # the loss (rayalign.objectives): sft, pretrain, dpo, apo_zero, ...; other keys are its options

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainDataConfig(Cfg):
    path: str | None = None  # a prepared dataset folder (parquet shards + manifest.json)
    inputs: list[str] = Field(
        default_factory=list
    )  # or raw files: the stage runs `prepare` into <output_dir>/prepared first
    max_length: int = 1024  # per document, in tokens (raw inputs only)
    seq_len: int = 1024  # per packed training row, in tokens (raw inputs only; ≥ max_length)
    # a longer document: cut to max_length, or quarantined (raw inputs only)
    overlength: Literal["truncate", "quarantine"] = "quarantine"
    shuffle: bool = True  # seeded permutation of rows per epoch
    pool: PoolConfig = PoolConfig(workers=0)  # actor pool of the stage's own prepare pass (workers 0: in this process)


class OptimConfig(Cfg):
    lr: float = 2e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (beta1, beta2)
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 0  # linear warm-up steps before the cosine decay
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping
    fused: bool = True  # fused AdamW kernel (CPU and CUDA, plain or FSDP2 DTensor parameters)


class CheckpointConfig(Cfg):
    every: int = 0  # steps between periodic checkpoints (0: only the final one)
    keep_last: int = 2  # periodic checkpoints kept in the run folder and by Ray
    # write shards in a background thread while training goes on (committed before the next save)
    async_save: bool = False
    export: bool = True  # export the final checkpoint as a Hugging Face folder (<output_dir>/final)


class ScalingConfig(Cfg):
    """How much hardware, not what is computed: left out of the config hash (2 workers = 1 process)."""

    resource_config: ClassVar[bool] = True
    workers: int = 0  # 0: run in this process (no Ray); N ≥ 1: Ray Train TorchTrainer with N workers
    use_gpu: bool = False  # one GPU per Ray Train worker (FSDP2 over them)
    cpus_per_worker: float = 1.0  # CPUs each Ray Train worker requests
    gpus_per_worker: float = 1.0  # GPUs each worker requests when use_gpu
    resources_per_worker: dict[str, float] = Field(default_factory=dict)  # custom Ray resources each worker requests
    max_failures: int = 1  # worker-group restarts Ray Train allows (from the last checkpoint)
    report_every: int = 10  # steps between metric reports to Ray (each costs a round-trip)
    storage_path: str | None = None  # Ray Train storage (local dir or s3://); default <output_dir>/ray


class TrainConfig(Cfg):
    resource_fields: ClassVar[frozenset[str]] = frozenset({"scaling", "torch_threads", "progress"})

    model: str = "builtin:smollm2-135m-instruct"  # the model to train: builtin:NAME, a Hugging Face folder or hub id
    output_dir: str  # the run folder: metrics.jsonl, checkpoints/, final/
    name: str = "train"  # run name (trackers, logs)
    data: TrainDataConfig = TrainDataConfig()  # the training data: a prepared folder or raw inputs
    objective: ObjectiveSpec = ObjectiveSpec()  # the loss and its options
    reference_model: str | None = None  # for objectives that need one; default: `model`
    peft: PeftConfig = PeftConfig()  # parameter-efficient training: none, LoRA or Aligner
    optim: OptimConfig = OptimConfig()  # optimizer and learning-rate schedule
    checkpoint: CheckpointConfig = CheckpointConfig()  # periodic checkpoints and the final export
    scaling: ScalingConfig = ScalingConfig()  # where it runs: this process, or Ray Train workers
    micro_batch_size: int = 1  # rows per forward pass per rank
    grad_accum: int = 1  # micro-batches per optimizer step per rank
    epochs: int = 1  # passes over the data (max_steps overrides)
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 0  # seeds the data order, dropout and initialisation
    # auto: bf16 mixed precision on GPU, fp32 on CPU; bf16: bf16 mixed precision on either (fp32 master
    # weights; FSDP2 gathers bf16 and reduces gradients in fp32); fp32: fp32 throughout
    dtype: DType = "auto"
    activation_checkpointing: bool = False  # recompute activations in the backward pass (less memory, slower)
    log_every: int = 1  # steps between metrics.jsonl rows
    tensorboard: bool = False  # same as listing tensorboard in report_to
    # experiment trackers (optional extra `tracking`): run name, config, per-step metrics
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    progress: bool = True  # a progress line (step/total, loss, tokens/s, ETA) on rank 0
    peak_tflops: float | None = None  # per device, for MFU; default: looked up for known GPUs
    stop_at_step: int | None = None  # save a checkpoint and stop early (resume later with the same config)
    log_samples: bool = False  # write the doc ids each rank consumed per step (resume audits)
    torch_threads: int = 1  # per worker; more threads than cores is much slower under contention

    @field_validator("micro_batch_size", "grad_accum", "epochs", "log_every")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be ≥ 1")
        return v


class ComposedRun(Cfg):
    """Base of stage configs that compose a training run under ``train`` next to their own keys.

    A YAML may nest the run under ``train:`` or write its keys at the top level; top-level keys that
    are not the stage's own go to the run. A key given both ways with different values is an error
    (neither spelling silently wins). `train_defaults` fill the run's gaps (e.g. its name)."""

    train_defaults: ClassVar[dict[str, Any]] = {}

    train: TrainConfig  # the training run (its keys may also be given at the top level)

    @classmethod
    def accepted_keys(cls) -> set[str]:
        """Every top-level key a YAML may give: the stage's own fields and the training run's."""
        return (set(cls.model_fields) - {"train"}) | set(TrainConfig.model_fields)

    @model_validator(mode="before")
    @classmethod
    def _route_to_train(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = set(cls.model_fields) - {"train"}
        nested = dict(data.get("train") or {})
        top = {k: v for k, v in data.items() if k not in own and k != "train"}
        clash = sorted(k for k in top.keys() & nested.keys() if top[k] != nested[k])
        if clash:
            k = clash[0]
            raise ValueError(f"{k!r} is given at the top level ({top[k]!r}) and under train: ({nested[k]!r}); keep one")
        run = {**cls.train_defaults, **top, **nested}
        return {**{k: v for k, v in data.items() if k in own}, "train": run}
