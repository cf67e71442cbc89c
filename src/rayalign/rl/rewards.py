"""Rewards for online alignment: named functions combined with weights.

    rewards:
      - {name: constraints}                     # the eval suite's verifiable checks, from prompt meta
      - {name: length, weight: 0.1, params: {target: 64}}

A reward function scores a batch: `fn(prompts, responses) -> list[float]`, where `prompts` are rows
of the `prompts` schema (``id``, ``messages``, ``meta`` — a JSON string or a dict) and `responses`
the generated texts, one per prompt row (a prompt sampled G times appears G times). `Rewards`
combines the configured functions into one total per response and keeps each part for metrics.

Add a reward with `@register("name")` on a factory that takes the spec's ``params`` and returns the
batch function; heavy state (a reward model, a judge engine) is built once in the factory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import Field

from rayalign.config import Cfg, ConfigError
from rayalign.eval.checks import check_response

RewardFn = Callable[[list[dict], list[str]], list[float]]
REWARDS: dict[str, Callable[..., RewardFn]] = {}


def register(name: str):
    def wrap(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        REWARDS[name] = factory
        return factory

    return wrap


class RewardSpec(Cfg):
    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


def prompt_meta(row: dict) -> dict:
    meta = row.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


@register("constraints")
def constraints_reward(all_required: bool = False) -> RewardFn:
    """Share of the prompt's `meta.constraints` the response satisfies (1.0 = every one); with
    ``all_required`` 1.0 only when all pass. A prompt without constraints scores 0."""

    def score(prompts: list[dict], responses: list[str]) -> list[float]:
        out = []
        for row, text in zip(prompts, responses, strict=True):
            cons = prompt_meta(row).get("constraints") or []
            passed = check_response(cons, text) if cons else []
            if not passed:
                out.append(0.0)
            else:
                out.append(float(all(passed)) if all_required else sum(passed) / len(passed))
        return out

    return score


@register("length")
def length_reward(target: int = 128, unit: str = "words") -> RewardFn:
    """A length penalty: −max(0, length − target) / target (0 up to `target`, −1 at twice it).
    `unit`: words (whitespace split) or chars."""
    if unit not in ("words", "chars"):
        raise ConfigError(f"rewards: length unit must be words or chars, not {unit!r}")

    def score(prompts: list[dict], responses: list[str]) -> list[float]:
        sizes = [len(t.split()) if unit == "words" else len(t) for t in responses]
        return [-max(0, n - target) / target for n in sizes]

    return score


class Rewards:
    """The configured rewards as one function: `rewards(prompts, responses) -> (total, parts)`."""

    def __init__(self, specs: list[RewardSpec]):
        if not specs:
            raise ConfigError("rewards: configure at least one reward, e.g. rewards: [{name: constraints}]")
        unknown = [s.name for s in specs if s.name not in REWARDS]
        if unknown:
            raise ConfigError(f"rewards: unknown reward {unknown[0]!r}; available: {', '.join(sorted(REWARDS))}")
        self.specs = specs
        self.fns = [REWARDS[s.name](**s.params) for s in specs]

    def __call__(self, prompts: list[dict], responses: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        parts = {s.name: fn(prompts, responses) for s, fn in zip(self.specs, self.fns, strict=True)}
        total = [sum(s.weight * parts[s.name][i] for s in self.specs) for i in range(len(responses))]
        return total, parts
