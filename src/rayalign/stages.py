"""The stage registry: name → (config class, run function), imported lazily.

Adding a stage is one line here; the CLI, `rayjobs/` entry points and the pipeline runner all
look stages up in this table. A run function takes its typed config and returns a
`rayalign.results.StageResult` (output folder, checkpoint, row counts, numeric metrics, details).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayalign.config import Cfg
    from rayalign.results import StageResult

# stage name -> "module:ConfigClass", "module:run_function"
STAGES: dict[str, tuple[str, str]] = {
    "prepare": ("rayalign.data.prepare:PrepareConfig", "rayalign.data.prepare:run_prepare"),
    "reference": ("rayalign.prefer.reference:ReferenceConfig", "rayalign.prefer.reference:run_reference"),
    "prefer": ("rayalign.prefer.stages:PreferConfig", "rayalign.prefer.stages:run_prefer"),
    "reward": ("rayalign.prefer.stages:RewardConfig", "rayalign.prefer.stages:run_reward"),
    "score": ("rayalign.prefer.score:ScoreConfig", "rayalign.prefer.score:run_score"),
    "sft": ("rayalign.train.stages:SFTConfig", "rayalign.train.stages:run_sft"),
    "pretrain": ("rayalign.train.stages:PretrainConfig", "rayalign.train.stages:run_pretrain"),
    "rewrite": ("rayalign.generate.rewrite:RewriteConfig", "rayalign.generate.rewrite:run_rewrite"),
    "pas": ("rayalign.generate.pas:PASConfig", "rayalign.generate.pas:run_pas"),
    "sample": ("rayalign.generate.sample:SampleConfig", "rayalign.generate.sample:run_sample"),
    "clair": ("rayalign.generate.clair:ClairConfig", "rayalign.generate.clair:run_clair"),
    "judge": ("rayalign.generate.judge:JudgeConfig", "rayalign.generate.judge:run_judge"),
    "eval": ("rayalign.eval.stage:EvalConfig", "rayalign.eval.stage:run_eval"),
    "grpo": ("rayalign.rl.grpo:GRPOConfig", "rayalign.rl.grpo:run_grpo"),
}


def _resolve(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def get_stage(name: str) -> tuple[type[Cfg], Callable[..., StageResult]]:
    if name not in STAGES:
        from rayalign.config import ConfigError

        raise ConfigError(f"unknown stage {name!r}; available: {', '.join(sorted(STAGES))}")
    cfg_ref, run_ref = STAGES[name]
    return _resolve(cfg_ref), _resolve(run_ref)


def run_stage(
    name: str, config_path: str | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> StageResult:
    from rayalign.config import load_config

    cfg_cls, run = get_stage(name)
    cfg = load_config(cfg_cls, config_path, overrides, data=data)
    return run(cfg)
