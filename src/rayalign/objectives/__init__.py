"""What the trainer optimises: one table of objectives behind one small protocol.

The trainer never branches on a loss name. It asks the objective to (1) collate rows into tensors,
(2) count the normalisation units in a micro-batch (target tokens, pairs, ...) and (3) return the
SUM of per-unit losses plus metric sums. The trainer divides by the GLOBAL count of the whole
optimizer step (all micro-batches on all ranks), so 4 micro-batches of 1 row equal 1 micro-batch of
4 rows and 2 ranks equal 1 process. A no-grad pass over held-out rows divides the same metric sums
(e.g. ``accuracy``: the chosen reward beats the rejected one) by the same count.

`OBJECTIVES` maps a name to a factory; the factory gets the `objective:` section of the config minus
`name` as keyword arguments. Every preference loss registered in `objectives.preference` (with
`@register`) appears here by itself: adding a loss is one function and its decorator.

    from rayalign.objectives import get_objective
    objective = get_objective("dpo", beta=0.1)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import torch

from rayalign.objectives.causal_lm import CausalLMObjective
from rayalign.objectives.pairs import MixtureObjective, PreferenceObjective, RewardObjective
from rayalign.objectives.policy import PolicyObjective
from rayalign.objectives.preference import PREFERENCE_LOSSES


class Objective(Protocol):
    name: str
    needs_reference: bool  # True: the trainer keeps a frozen reference model unless rows carry ref log-probs
    model_class: str  # "causal_lm" or "sequence_classification" (num_labels=1)

    def collate(self, rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]: ...

    def count(self, batch: dict) -> torch.Tensor: ...

    def loss(self, model, batch: dict, ref_model=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "sft": partial(CausalLMObjective, "sft"),
    "pretrain": partial(CausalLMObjective, "pretrain"),
    "causal_lm": CausalLMObjective,
    "reward": RewardObjective,
    "mixture": MixtureObjective,
    "grpo": PolicyObjective,  # rollout rows from `rayalign grpo` (rayalign.rl), not a dataset
    **{name: partial(PreferenceObjective, name) for name in PREFERENCE_LOSSES},
}


def get_objective(name: str, **kwargs: Any) -> Objective:
    """The objective `name` built with its hyper-parameters; unknown names and parameters are ConfigErrors."""
    if name not in OBJECTIVES:
        from rayalign.config import ConfigError

        raise ConfigError(f"objective.name: unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name](**kwargs)


__all__ = ["OBJECTIVES", "Objective", "get_objective"]
