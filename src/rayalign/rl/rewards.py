"""Rewards for online alignment: named functions combined with weights.

    rewards:
      - {name: constraints}                     # the eval suite's verifiable checks, from prompt meta
      - {name: length, weight: 0.1, params: {target: 64}}
      - {name: repetition}                      # −1 for an answer that loops a phrase
      - {name: reward_model, weight: 0.5, params: {model: runs/x/reward/checkpoints/step-000100/model}}
      - {name: judge, params: {engine: {backend: hf, model: builtin:smollm2-135m-instruct}}}

A reward function scores a batch: `fn(prompts, responses) -> list[float]`, where `prompts` are rows
of the `prompts` schema (``id``, ``messages``, ``meta`` — a JSON string or a dict) and `responses`
the generated texts, one per prompt row (a prompt sampled G times appears G times). `Rewards`
combines the configured functions into one total per response and keeps each part for metrics.

Add a reward with `@register("name")` on a factory that takes the spec's ``params`` and returns the
batch function; heavy state (a reward model, a judge engine) is built once in the factory. A batch
function may also carry `counts` (a dict of running totals, e.g. the judge's unparseable replies),
which `Rewards.stats()` reports, and `close()`, which `Rewards.close()` calls.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from string import Template
from typing import Any

from pydantic import Field, ValidationError

from rayalign.checks import check_response, repeated_phrase
from rayalign.config import Cfg, ConfigError
from rayalign.generate.prompts import template_text

RewardFn = Callable[[list[dict], list[str]], list[float]]
REWARDS: dict[str, Callable[..., RewardFn]] = {}


def register(name: str):
    def wrap(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        REWARDS[name] = factory
        return factory

    return wrap


class RewardSpec(Cfg):
    name: str  # a registered reward: constraints, length, repetition, reward_model, judge, ...
    weight: float = 1.0  # its weight in the total reward
    params: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the reward's factory


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


@register("repetition")
def repetition_reward(n: int = 4, times: int = 4) -> RewardFn:
    """A degeneration penalty: −1 for a response in which some run of `n` words occurs `times` or more
    times (case-insensitive; the eval report's repetition detector), else 0."""
    if n < 1 or times < 2:
        raise ConfigError(f"rewards: repetition needs n ≥ 1 and times ≥ 2, not n={n}, times={times}")

    def score(prompts: list[dict], responses: list[str]) -> list[float]:
        return [-1.0 if repeated_phrase(t, n, times) else 0.0 for t in responses]

    return score


def prompt_messages(row: dict) -> list[dict]:
    """The row's chat messages; a plain ``prompt`` string becomes one user turn."""
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        return messages
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt:
        return prompt
    return [{"role": "user", "content": str(prompt or "")}]


def _fit(prompt_ids: list[int], response_ids: list[int], max_length: int) -> tuple[list[int], list[int], bool]:
    """Cut an over-long sequence to `max_length`: the response keeps at least half the budget (its
    head: the reward head reads the last real token) and the prompt keeps its tail."""
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids, False
    response_ids = response_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    return prompt_ids[len(prompt_ids) + len(response_ids) - max_length :], response_ids, True


class RewardModelReward:
    """A trained Bradley–Terry reward model (the `reward` stage's checkpoint) scoring every response.

    Sequences are built and scored exactly as `rayalign score` does (the pair tokeniser with the
    response on both sides, `collate_sequences`, `sequence_rewards`), in length-sorted batches.
    ``normalize``: None (raw scores), ``sigmoid`` (σ(r) in (0, 1)) or ``batch`` (standardised over
    the batch: mean 0, std 1; all-equal scores give 0).
    """

    def __init__(self, model: str, batch_size: int, max_length: int, normalize: str | None, device: str):
        from rayalign.models.loader import load_tokenizer, resolve_model_path
        from rayalign.objectives.accuracy import load_reward_model

        self.batch_size, self.max_length, self.normalize = batch_size, max_length, normalize
        self.device = device
        self.tok = load_tokenizer(model)
        self.model = load_reward_model(resolve_model_path(model)).to(device)
        self.counts = {"scored": 0, "truncated": 0}

    def _sequences(self, prompts: list[dict], responses: list[str]) -> list[tuple[list[int], list[int]]]:
        from rayalign.data.tokenize import tokenize_pair

        seqs = []
        for row, text in zip(prompts, responses, strict=True):
            t = tokenize_pair(self.tok, prompt_messages(row), text, text)
            p, y, cut = _fit(t["prompt_ids"], t["chosen_ids"], self.max_length)
            self.counts["truncated"] += cut
            seqs.append((p, y))
        return seqs

    def __call__(self, prompts: list[dict], responses: list[str]) -> list[float]:
        import torch

        from rayalign.objectives.pairs import collate_sequences, sequence_rewards

        seqs = self._sequences(prompts, responses)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
        out = [0.0] * len(seqs)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = collate_sequences([seqs[i][0] for i in idx], [seqs[i][1] for i in idx], self.tok.pad_token_id)
                scores = sequence_rewards(self.model, {k: v.to(self.device) for k, v in batch.items()})
                for i, v in zip(idx, scores.cpu().tolist(), strict=True):
                    out[i] = float(v)
        self.counts["scored"] += len(out)
        return _normalized(out, self.normalize)


def _normalized(scores: list[float], how: str | None) -> list[float]:
    if how == "sigmoid":
        return [1.0 / (1.0 + math.exp(-s)) for s in scores]
    if how == "batch" and scores:
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return [(s - mean) / std if std > 0 else 0.0 for s in scores]
    return scores


@register("reward_model")
def reward_model_reward(
    model: str, batch_size: int = 16, max_length: int = 1024, normalize: str | None = None, device: str = "cpu"
) -> RewardFn:
    """The reward of a trained Bradley–Terry reward model (`model`: the reward stage's checkpoint)."""
    if batch_size < 1 or max_length < 2:
        raise ConfigError(
            f"rewards: reward_model needs batch_size ≥ 1 and max_length ≥ 2, got {batch_size}, {max_length}"
        )
    if normalize not in (None, "sigmoid", "batch"):
        raise ConfigError(f"rewards: reward_model normalize must be sigmoid, batch or null, not {normalize!r}")
    return RewardModelReward(model, batch_size, max_length, normalize, device)


# "Rating: 7", "rating = 7/10", "**Score:** 8"; else a reply that is only a number ("7", "7/10.")
_RATING = re.compile(r"(?:rating|score)\W{0,4}(\d+(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE)
_BARE = re.compile(r"^\W*(\d+(?:\.\d+)?)(?:\s*/\s*10)?\W*$")


def parse_rating(raw: str, scale: int = 10) -> float | None:
    """The judge's 1..`scale` rating mapped to [0, 1] ((r − 1) / (scale − 1)); None when the reply
    holds no rating in range, or two different ones."""
    text = (raw or "").strip()
    found = {float(v) for v in _RATING.findall(text)}
    if not found:
        bare = _BARE.match(text)
        found = {float(bare.group(1))} if bare else set()
    if len(found) != 1:
        return None
    value = found.pop()
    return (value - 1) / (scale - 1) if 1 <= value <= scale else None


def rating_template(path: str | None = None) -> str:
    """The judge's prompt: `path` (a text file with $prompt and $response), or the packaged one."""
    if path:
        from rayalign import storage

        return storage.read_text(path)
    return template_text("judge_rating")


class JudgeReward:
    """An LLM judge rating every response 1..`scale` through the Engine layer (hf or vllm), mapped to
    [0, 1]; an unparseable or failed reply scores 0 and is counted (`counts["unparseable"]`)."""

    def __init__(self, engine: Any, template: str, max_tokens: int, scale: int):
        from rayalign.generate.engine import make_engine

        self.template, self.max_tokens, self.scale = Template(template), max_tokens, scale
        self.engine = make_engine(engine)
        self.counts = {"judged": 0, "unparseable": 0}

    def render(self, row: dict, response: str) -> str:
        from rayalign.generate.prompts import prompt_text

        return self.template.substitute(prompt=prompt_text(prompt_messages(row)), response=response).rstrip("\n")

    def __call__(self, prompts: list[dict], responses: list[str]) -> list[float]:
        from rayalign.generate.engine import GenRequest, SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.max_tokens)
        requests = [
            GenRequest(messages=[{"role": "user", "content": self.render(row, text)}], params=params)
            for row, text in zip(prompts, responses, strict=True)
        ]
        out = []
        for result in self.engine.generate(requests):
            value = parse_rating(result.texts[0], self.scale) if result.ok and result.texts else None
            self.counts["unparseable"] += value is None
            out.append(0.0 if value is None else value)
        self.counts["judged"] += len(out)
        return out

    def close(self) -> None:
        self.engine.close()


@register("judge")
def judge_reward(
    engine: dict[str, Any] | None = None, template: str | None = None, max_tokens: int = 16, scale: int = 10
) -> RewardFn:
    """An LLM judge: `engine` an EngineConfig (backend, model, ...), `template` an optional prompt
    file with $prompt and $response (default: the packaged judge_rating template)."""
    from rayalign.generate.engine import EngineConfig

    if max_tokens < 1 or scale < 2:
        raise ConfigError(f"rewards: judge needs max_tokens ≥ 1 and scale ≥ 2, got {max_tokens}, {scale}")
    try:
        cfg = EngineConfig.model_validate(engine or {})
    except ValidationError as e:
        raise ConfigError(f"rewards: judge engine: {e}") from e
    text = rating_template(template)
    missing = [k for k in ("prompt", "response") if f"${k}" not in text]
    if missing:
        raise ConfigError(f"rewards: judge template {template} lacks ${', $'.join(missing)}")
    return JudgeReward(cfg, text, max_tokens, scale)


def build_reward(spec: RewardSpec) -> RewardFn:
    """The batch function of one spec; unknown names and bad params are ConfigErrors naming the reward."""
    factory = REWARDS.get(spec.name)
    if factory is None:
        raise ConfigError(f"rewards: unknown reward {spec.name!r}; available: {', '.join(sorted(REWARDS))}")
    try:
        inspect.signature(factory).bind(**spec.params)
    except TypeError as e:
        accepted = ", ".join(inspect.signature(factory).parameters) or "none"
        raise ConfigError(f"rewards: {spec.name}: bad params ({e}); accepted: {accepted}") from e
    try:
        return factory(**spec.params)
    except ConfigError as e:
        raise ConfigError(str(e) if spec.name in str(e) else f"rewards: {spec.name}: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rewards: {spec.name}: bad params {spec.params}: {e}") from e


class Rewards:
    """The configured rewards as one function: `rewards(prompts, responses) -> (total, parts)`."""

    def __init__(self, specs: list[RewardSpec]):
        if not specs:
            raise ConfigError("rewards: configure at least one reward, e.g. rewards: [{name: constraints}]")
        self.specs = specs
        self.fns = [build_reward(s) for s in specs]

    def __call__(self, prompts: list[dict], responses: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        parts = {s.name: fn(prompts, responses) for s, fn in zip(self.specs, self.fns, strict=True)}
        total = [sum(s.weight * parts[s.name][i] for s in self.specs) for i in range(len(responses))]
        return total, parts

    def stats(self) -> dict[str, float]:
        """Running totals of the rewards that keep them, as `reward/<name>/<count>` metrics."""
        return {
            f"reward/{s.name}/{k}": float(v)
            for s, fn in zip(self.specs, self.fns, strict=True)
            for k, v in (getattr(fn, "counts", None) or {}).items()
        }

    def close(self) -> None:
        for fn in self.fns:
            close = getattr(fn, "close", None)
            if close is not None:
                close()
