"""`rayalign prefer` (preference optimisation) and `rayalign reward` (Bradley–Terry reward model).

    rayalign prefer rayjobs/configs/prefer_tiny.yaml objective.name=apo_down
    rayalign reward rayjobs/configs/reward_tiny.yaml

Both are the training engine (`rayalign.train.launcher.launch`: FSDP2, LoRA/Aligner, resume, metrics)
with an objective from the registry; this module only gets the data ready:

- `prefer`, reference-based objective, ``reference.mode: precomputed`` (default): the `reference`
  stage scores every pair once into ``<output_dir>/reference`` and the loop reads those columns, so
  no reference model is held in training memory. ``on_the_fly``: pairs are only tokenised
  (``<output_dir>/prepared``) and the loop keeps a frozen reference model — the two runs agree.
- reference-free objectives (SimPO, ORPO) and `reward` only tokenise.

`data.path` may name a folder that already holds tokenised pairs (from `prepare` or `reference`);
`data.inputs` raw pair files. The summary adds the held-in pair accuracy of the final model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rayalign.config import Cfg, ConfigError
from rayalign.data.shards import PoolConfig
from rayalign.prefer.reference import ReferenceConfig, has_reference_columns, run_reference
from rayalign.train.config import ObjectiveSpec, TrainConfig


class ReferenceSpec(Cfg):
    mode: Literal["precomputed", "on_the_fly"] = "precomputed"
    batch_size: int = 8  # pairs per forward in the reference pass
    pool: PoolConfig = PoolConfig()  # the reference pass's actor pool (workers: 0 = in this process)


class PreferConfig(TrainConfig):
    name: str = "prefer"
    objective: ObjectiveSpec = ObjectiveSpec(name="apo_zero", beta=0.1)
    reference: ReferenceSpec = ReferenceSpec()
    eval_pairs: int = 256  # held-in pairs scored after training (0: skip)


class RewardConfig(TrainConfig):
    name: str = "reward"
    objective: ObjectiveSpec = ObjectiveSpec(name="reward")
    eval_pairs: int = 256


def _train_config(cfg: TrainConfig, data_path: str) -> TrainConfig:
    """The engine's own config: the stage's extra sections dropped, data.path pointing at the pairs."""
    fields = set(TrainConfig.model_fields)
    base = TrainConfig.model_validate({k: v for k, v in cfg.model_dump().items() if k in fields})
    return base.model_copy(update={"data": base.data.model_copy(update={"path": data_path, "inputs": []})})


def last_metrics(summary: dict) -> dict:
    """The final logged step (loss, rewards, margins, accuracy...) from the run's metrics.jsonl."""
    import json

    path = Path(summary.get("metrics_file") or "")
    lines = [x for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def tokenised_pairs(cfg: TrainConfig, log=print) -> str:
    """A folder of tokenised pairs (prompt_ids/chosen_ids/rejected_ids): data.path as is, or `prepare` data.inputs."""
    if cfg.data.path:
        return cfg.data.path
    if not cfg.data.inputs:
        raise ConfigError("data: give data.path (a folder of prepared pairs) or data.inputs (raw pair files)")
    from rayalign.data.prepare import PrepareConfig, run_prepare

    target = Path(cfg.output_dir) / "prepared"
    run_prepare(PrepareConfig(kind="pairs", inputs=cfg.data.inputs, output=str(target), model=cfg.model,
                              max_length=cfg.data.max_length, overlength="quarantine", pool=cfg.data.pool), log=log)
    return str(target)


def pairs_with_reference(cfg: PreferConfig, log=print) -> str:
    """A folder whose rows carry ref_chosen_logp / ref_rejected_logp (running `reference` if needed)."""
    if cfg.data.path and has_reference_columns(cfg.data.path):
        return cfg.data.path
    inputs = [cfg.data.path] if cfg.data.path else cfg.data.inputs
    if not inputs:
        raise ConfigError("data: give data.path (a folder of pairs) or data.inputs (raw pair files)")
    target = Path(cfg.output_dir) / "reference"
    run_reference(ReferenceConfig(inputs=inputs, output=str(target), model=cfg.reference_model or cfg.model,
                                  max_length=cfg.data.max_length, batch_size=cfg.reference.batch_size,
                                  pool=cfg.reference.pool), log=log)
    return str(target)


def run_prefer(cfg: PreferConfig, log=print) -> dict:
    from rayalign.train.launcher import launch
    from rayalign.objectives import get_objective

    objective = get_objective(cfg.objective.name, **cfg.objective.kwargs())  # bad names/params fail here
    if objective.model_class != "causal_lm":
        raise ConfigError(f"objective.name: {cfg.objective.name!r} trains a {objective.model_class} model; "
                          f"use `rayalign reward` for it")
    if objective.needs_reference and cfg.reference.mode == "precomputed":
        data = pairs_with_reference(cfg, log)
    else:
        data = tokenised_pairs(cfg, log)
        if objective.needs_reference and has_reference_columns(data):
            raise ConfigError("reference.mode: on_the_fly, but data.path already carries reference log-probs "
                              "(the loop would use them); give data.inputs or a `prepare` output instead")
    summary = launch(_train_config(cfg, data))
    summary.update(data=data, metrics=last_metrics(summary))
    summary["reference_mode"] = cfg.reference.mode if objective.needs_reference else "none"
    if cfg.eval_pairs > 0 and summary.get("checkpoint"):
        summary["pair_accuracy"] = evaluate_policy(cfg, summary, data)
        log(f"[prefer] held-in pair accuracy {summary['pair_accuracy']['accuracy']:.3f} "
            f"over {summary['pair_accuracy']['pairs']} pairs")
    return summary


def evaluate_policy(cfg: TrainConfig, summary: dict, data: str) -> dict:
    from rayalign.models.loader import load_tokenizer
    from rayalign.prefer.evaluate import load_policy, load_rows, preference_accuracy

    is_adapter = cfg.peft.method != "none" and "adapter" not in summary
    model = load_policy(summary["checkpoint"], cfg.model, adapter=is_adapter)
    return preference_accuracy(model, load_rows(data, cfg.eval_pairs), load_tokenizer(cfg.model).pad_token_id)


def run_reward(cfg: RewardConfig, log=print) -> dict:
    from rayalign.train.launcher import launch
    from rayalign.objectives import get_objective

    objective = get_objective(cfg.objective.name, **cfg.objective.kwargs())
    if objective.model_class != "sequence_classification":
        raise ConfigError(f"objective.name: {cfg.objective.name!r} is not a reward-model objective; "
                          f"use `rayalign prefer` for it")
    if cfg.peft.method != "none":
        raise ConfigError("peft.method: the reward stage trains the full model and its new score head; set none")
    data = tokenised_pairs(cfg, log)
    summary = launch(_train_config(cfg, data))
    summary.update(data=data, metrics=last_metrics(summary))
    if cfg.eval_pairs > 0 and summary.get("checkpoint"):
        from rayalign.models.loader import load_tokenizer
        from rayalign.prefer.evaluate import load_reward_model, load_rows, reward_accuracy

        model = load_reward_model(summary["checkpoint"])
        summary["pair_accuracy"] = reward_accuracy(model, load_rows(data, cfg.eval_pairs),
                                                   load_tokenizer(cfg.model).pad_token_id)
        log(f"[reward] held-in ranking accuracy {summary['pair_accuracy']['accuracy']:.3f} "
            f"over {summary['pair_accuracy']['pairs']} pairs")
    return summary
