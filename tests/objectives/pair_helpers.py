"""The hand-worked pair shared by the loss tests: β = 0.1, h_w = 2.0 (policy −3 vs reference −5), h_l = −1.0
(policy −7 vs reference −6), |y_w| = 4, |y_l| = 3."""

from __future__ import annotations

import torch

from rayalign.objectives.preference import PairLogps


def t(*xs: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def base_pair(grad: bool = False) -> PairLogps:
    return PairLogps(
        chosen=t(-3.0, grad=grad),
        rejected=t(-7.0, grad=grad),
        ref_chosen=t(-5.0),
        ref_rejected=t(-6.0),
        chosen_tokens=torch.tensor([4]),
        rejected_tokens=torch.tensor([3]),
    )


def close(x: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    assert x.shape == (1,)
    assert abs(float(x[0]) - expected) < tol, (float(x[0]), expected)


def grads(fn, **kw) -> tuple[float, float]:
    """dL/d log πθ(y_w) and dL/d log πθ(y_l) of `fn` at the hand-worked pair (0 when L does not read y_l)."""
    lp = base_pair(grad=True)
    loss, _ = fn(lp, **kw)
    loss.sum().backward()
    assert lp.chosen.grad is not None
    return float(lp.chosen.grad[0]), float(lp.rejected.grad[0]) if lp.rejected.grad is not None else 0.0
