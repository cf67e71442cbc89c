"""Bradley–Terry reward-model loss as a pure function of the two scalar rewards."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayalign.objectives.preference import Metrics, reward_metrics


def bradley_terry(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Bradley–Terry pairwise loss (Ouyang et al. 2022, eq. 1): L = −log σ(r(x, y_w) − r(x, y_l)).

    The rewards are the scalar outputs of a sequence-classification head; only their difference
    is trained, so the reward scale is arbitrary (but consistent across prompts).
    """
    return -F.logsigmoid(reward_chosen - reward_rejected), reward_metrics(reward_chosen, reward_rejected)
