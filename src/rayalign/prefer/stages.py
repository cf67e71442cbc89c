"""`rayalign prefer` (preference optimisation) and `rayalign reward` (Bradley–Terry reward model).

    rayalign prefer rayjobs/configs/prefer_tiny.yaml objective.name=apo_down
    rayalign reward rayjobs/configs/reward_tiny.yaml

Both are the training engine (`rayalign.train.launcher.launch`: FSDP2, LoRA/Aligner, resume, metrics)
with an objective from the table in `rayalign.objectives`; this module only gets the data ready:

- `prefer`, reference-based objective, ``reference.mode: precomputed`` (default): the `reference`
  stage scores every pair once into ``<output_dir>/reference`` and the loop reads those columns, so
  no reference model is held in training memory. ``on_the_fly``: pairs are only tokenised
  (``<output_dir>/prepared``) and the loop keeps a frozen reference model — the two runs agree.
- reference-free objectives (SimPO, ORPO) and `reward` only tokenise.

The config is composed: ``train`` is the training engine's own `TrainConfig`, next to the stage's
sections (``reference``, ``eval_pairs``). A YAML may nest the run under ``train:`` or write its keys
at the top level (model, data, objective, micro_batch_size, ...); top-level keys that are not the
stage's own go to ``train``. `data.path` may name a folder of tokenised pairs (from `prepare` or
`reference`); `data.inputs` raw pair files.

The result adds the held-in pair accuracy of the final model (``eval_pairs`` rows), computed where
training ran: in this process for an in-process run, in a Ray task with a training worker's
resources (its GPU, bf16 there) for a Ray Train run — never in a driver-side fp32 copy.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from rayalign import storage
from rayalign.config import Cfg, ConfigError
from rayalign.data.dataset import ensure_dataset
from rayalign.data.shards import PoolConfig
from rayalign.prefer.reference import ReferenceConfig, has_reference_columns, run_reference
from rayalign.results import StageResult, numeric_metrics
from rayalign.train.config import ComposedRun, TrainConfig

REFERENCE = "reference"  # the folder under output_dir that holds the pairs with reference log-probs


class ReferencePassConfig(Cfg):
    resource_fields = frozenset({"batch_size", "pool"})

    # precomputed: a `reference` pass before training; on_the_fly: the reference runs in training
    mode: Literal["precomputed", "on_the_fly"] = "precomputed"
    batch_size: int = 8  # pairs per forward in the reference pass
    pool: PoolConfig = PoolConfig()  # the reference pass's actor pool (workers: 0 = in this process)


class _PairStageConfig(ComposedRun):
    """A training stage on pairs: the engine's `train` config plus the stage's own sections."""

    train: TrainConfig  # the training run (its keys may also be given at the top level)
    eval_pairs: int = 256  # held-in pairs scored after training (0: skip)


class PreferConfig(_PairStageConfig):
    train_defaults: ClassVar[dict[str, Any]] = {"objective": {"name": "apo_zero", "beta": 0.1}, "name": "prefer"}

    # how the reference log-probs are obtained (reference-based objectives only)
    reference: ReferencePassConfig = ReferencePassConfig()


class RewardConfig(_PairStageConfig):
    train_defaults: ClassVar[dict[str, Any]] = {"objective": {"name": "reward"}, "name": "reward"}


def _with_data(cfg: TrainConfig, data_path: str) -> TrainConfig:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": data_path, "inputs": []})})


def last_metrics(trained: StageResult) -> dict[str, float]:
    """The training result's metrics plus the final logged step (loss, rewards, margins, accuracy...)
    from the run's metrics.jsonl, numbers only; the record's wall-clock `time` stamp is not a metric."""
    import json

    path = str(trained.details.get("metrics_file") or "")
    text = storage.read_text(path) if path and storage.exists(path) else ""
    lines = [x for x in text.splitlines() if x.strip()]
    record = json.loads(lines[-1]) if lines else {}
    record.pop("time", None)
    return {**trained.metrics, **numeric_metrics(record)}


def tokenised_pairs(cfg: TrainConfig, log=print) -> str:
    """A folder of tokenised pairs (prompt_ids/chosen_ids/rejected_ids): data.path as is, or `prepare` data.inputs."""
    d = cfg.data
    return ensure_dataset(
        "pairs",
        path=d.path,
        inputs=d.inputs,
        output_dir=cfg.output_dir,
        model=cfg.model,
        max_length=d.max_length,
        overlength="quarantine",
        pool=d.pool,
        log=log,
    )


def pairs_with_reference(cfg: PreferConfig, log=print) -> str:
    """A folder whose rows carry ref_chosen_logp / ref_rejected_logp (running `reference` if needed)."""
    train = cfg.train
    if train.data.path and has_reference_columns(train.data.path):
        return train.data.path
    inputs = [train.data.path] if train.data.path else train.data.inputs
    if not inputs:
        raise ConfigError("data: give data.path (a folder of pairs) or data.inputs (raw pair files)")
    target = storage.join(train.output_dir, REFERENCE)
    run_reference(
        ReferenceConfig(
            inputs=inputs,
            output=target,
            model=train.reference_model or train.model,
            max_length=train.data.max_length,
            batch_size=cfg.reference.batch_size,
            pool=cfg.reference.pool,
        ),
        log=log,
    )
    return target


def _objective(cfg: TrainConfig, model_class: str, other_stage: str):
    from rayalign.objectives import get_objective

    objective = get_objective(cfg.objective.name, **cfg.objective.kwargs())  # bad names/params fail here
    if objective.model_class != model_class:
        raise ConfigError(
            f"objective.name: {cfg.objective.name!r} trains a {objective.model_class} model; "
            f"use `rayalign {other_stage}` for it"
        )
    return objective


def run_prefer(cfg: PreferConfig, log=print) -> StageResult:
    from rayalign.train.launcher import launch

    objective = _objective(cfg.train, "causal_lm", "reward")
    if objective.needs_reference and cfg.reference.mode == "precomputed":
        data = pairs_with_reference(cfg, log)
    else:
        data = tokenised_pairs(cfg.train, log)
        if objective.needs_reference and has_reference_columns(data):
            raise ConfigError(
                "reference.mode: on_the_fly, but data.path already carries reference log-probs "
                "(the loop would use them); give data.inputs or a `prepare` output instead"
            )
    train = _with_data(cfg.train, data)
    trained = launch(train)
    mode = cfg.reference.mode if objective.needs_reference else "none"
    return _result("prefer", train, trained, data, cfg.eval_pairs, "policy", log, reference_mode=mode)


def run_reward(cfg: RewardConfig, log=print) -> StageResult:
    from rayalign.train.launcher import launch

    _objective(cfg.train, "sequence_classification", "prefer")
    if cfg.train.peft.method != "none":
        raise ConfigError("peft.method: the reward stage trains the full model and its new score head; set none")
    train = _with_data(cfg.train, tokenised_pairs(cfg.train, log))
    return _result("reward", train, launch(train), train.data.path or "", cfg.eval_pairs, "reward", log)


def _result(
    stage: str,
    train: TrainConfig,
    trained: StageResult,
    data: str,
    eval_pairs: int,
    kind: Literal["policy", "reward"],
    log,
    **details: Any,
) -> StageResult:
    """The stage's typed result: the last logged step's metrics, the held-in accuracy, paths in details."""
    metrics = last_metrics(trained)
    checkpoint = trained.checkpoint
    if eval_pairs > 0 and checkpoint:
        # a merged LoRA run's checkpoint is a full folder (its adapter is listed in details)
        adapter = train.peft.method != "none" and not trained.details.get("adapter")
        acc = heldin_accuracy(train, kind, checkpoint, adapter, data, eval_pairs)
        metrics.update(heldin_accuracy=acc["accuracy"], heldin_margin=acc["margin"], heldin_pairs=acc["pairs"])
        log(f"[{stage}] held-in pair accuracy {acc['accuracy']:.3f} over {acc['pairs']} pairs")
    extra = trained.details
    return StageResult(
        stage=stage,
        output=None,
        checkpoint=checkpoint,
        metrics=metrics,
        details={"data": data, "output_dir": train.output_dir, **details, "train": extra},
    )


def heldin_accuracy(
    train: TrainConfig, kind: Literal["policy", "reward"], checkpoint: str, adapter: bool, data: str, limit: int
) -> dict:
    """Pair accuracy of the trained model where training ran: in this process for an in-process run,
    else in one Ray task holding a training worker's resources (CPUs, and its GPU when use_gpu)."""
    args = (kind, checkpoint, train.model, adapter, data, limit, train.dtype)
    if train.scaling.workers == 0:
        return accuracy_task(*args)
    import ray

    from rayalign.raycluster import ensure_ray

    ensure_ray()
    s = train.scaling
    task = ray.remote(num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker if s.use_gpu else 0)(accuracy_task)
    return ray.get(task.remote(*args))


def accuracy_task(kind: str, checkpoint: str, base: str, adapter: bool, data: str, limit: int, dtype: str) -> dict:
    """Load the trained model on this node's device (bf16 on a GPU under dtype auto) and score the pairs."""
    import torch

    from rayalign.models.loader import load_model, load_tokenizer
    from rayalign.objectives.accuracy import load_reward_model, load_rows, preference_accuracy, reward_accuracy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, pad_id = load_rows(data, limit), load_tokenizer(base).pad_token_id
    if kind == "reward":
        return reward_accuracy(load_reward_model(checkpoint).to(device), rows, pad_id)
    model = (
        load_model(base, dtype=dtype, device=device, adapter=checkpoint)
        if adapter
        else load_model(checkpoint, dtype=dtype, device=device)
    )
    return preference_accuracy(model.eval(), rows, pad_id)
