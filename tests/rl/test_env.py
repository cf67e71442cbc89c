"""Multi-turn tool rollouts: the sandboxed calculator, the generated task set, chat-template turn
tokens without drift, and episodes that are token in, token out on a real engine."""

from __future__ import annotations

import json
import time
from typing import ClassVar

import pytest
from grpo_helpers import TINY, grpo_config

from rayalign.constants import IGNORE
from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
from rayalign.models.loader import load_tokenizer
from rayalign.objectives import get_objective
from rayalign.rl import env as envmod
from rayalign.rl.env import (
    CalculatorEnv,
    EnvConfig,
    Step,
    calculator_tasks,
    observation_ids,
    run_episodes,
    sandbox_eval,
    write_calculator_tasks,
)
from rayalign.stages import run_stage

pytestmark = pytest.mark.timeout(120)


def test_sandbox_evaluates_arithmetic_only_within_limits():
    assert sandbox_eval("2 + 3 * 4") == "14"
    assert sandbox_eval("(7 - 2) ** 2 / 4") == "6.25"
    assert sandbox_eval("-(3 // 2) % 5") == "4"
    for bad in ("open('/etc/passwd').read()", "__import__('os').system('true')", "x + 1", "(1).real"):
        assert sandbox_eval(bad).startswith("error: ValueError: only numbers"), bad
    assert sandbox_eval("1 +").startswith("error: SyntaxError")
    assert sandbox_eval("1 / 0").startswith("error: ZeroDivisionError")
    t0 = time.monotonic()
    assert sandbox_eval("2 ** (2 ** 34)", memory_mb=128) == "error: memory limit"  # a 2 GiB integer
    assert sandbox_eval("9 ** 9 ** 9 ** 9", time_limit=1.0) == "error: time limit"
    assert time.monotonic() - t0 < 15


def test_calculator_tasks_and_environment_rewards(tmp_path):
    tasks = calculator_tasks(20, seed=4)
    assert tasks == calculator_tasks(20, seed=4) and tasks != calculator_tasks(20, seed=5)
    for row in tasks:
        expr = row["meta"]["expression"]
        assert row["meta"]["answer"] == eval(expr, {"__builtins__": {}})  # test-side reference
        assert expr.count("(") == 2
    path = write_calculator_tasks(str(tmp_path / "t.jsonl"), 3)
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert path.endswith("t.jsonl") and [json.loads(x)["id"] for x in lines] == ["calc-0-0", "calc-0-1", "calc-0-2"]

    few = calculator_tasks(20, seed=4, few_shot=True)
    assert [r["meta"] for r in few] == [r["meta"] for r in tasks]  # the same tasks, another prompt
    example = few[0]["messages"][1:5]  # the worked exchange: the call, its result, the answer
    called = CalculatorEnv.CALL.search(example[1]["content"]).group(1)
    assert (
        example[2]["content"]
        == "<result>" + str(eval(called, {"__builtins__": {}})) + "</result>"
        == "<result>57</result>"
    )
    assert example[3]["content"] == "<answer>57</answer>"
    assert [m["role"] for m in few[0]["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert few[0]["messages"][-1]["content"] == f"Compute {tasks[0]['meta']['expression']}."

    env = CalculatorEnv(EnvConfig())
    row = tasks[0]
    assert env.reset(row) == row["messages"]
    answer = row["meta"]["answer"]
    assert env.step(f"<calc>{row['meta']['expression']}</calc>") == Step(f"<result>{answer}</result>", 0.0, False)
    assert env.step(f"so <answer>{answer}</answer>") == Step(None, 1.0, True)
    assert env.step(f"<answer>{answer + 1}</answer>") == Step(None, 0.0, True)
    assert env.step("no idea") == Step(None, 0.0, True)


@pytest.mark.parametrize("spec", ["tiny-random:llama", "tiny-random:mistral"])
def test_turn_tokens_match_the_chat_template(spec):
    """Built turn by turn — prompt ids, the reply's ids as an engine samples them (text tokens then
    the end token), the template's observation tokens — the ids equal the template's rendering of
    the whole conversation: no drift at turn boundaries."""
    tok = load_tokenizer(spec)
    eos = tok.eos_token
    replies = ["<calc>(3 + 4) * 5</calc>", "So the value is <answer>35</answer>."]
    obs = "<result>35</result>"
    conv = [{"role": "user", "content": "Compute (3 + 4) * 5."}]
    ids = list(
        tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
    )
    ids += tok(replies[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids += observation_ids(tok, "user", obs, eos)
    ids += tok(replies[1], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    whole = [
        *conv,
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": obs},
        {"role": "assistant", "content": replies[1]},
    ]
    reference = tok(tok.apply_chat_template(whole, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids == reference[: len(ids)]
    assert tok.decode(reference[len(ids) :]).strip() == ""  # only the template's trailing newline


class Echo:
    """A user environment: three turns, each answered with "ok"; reward = turns' total characters."""

    def __init__(self, cfg):
        self.n = 0
        self.chars = 0

    def reset(self, row):
        return row["messages"]

    def step(self, action):
        self.n += 1
        self.chars += len(action)
        return Step("ok", 0.0, False) if self.n < 3 else Step(None, float(self.chars), True)


def test_episodes_are_token_in_token_out(monkeypatch):
    monkeypatch.setitem(envmod.ENVIRONMENTS, "echo", Echo)
    engine = make_engine(EngineConfig(model=TINY))
    try:
        cfg = EnvConfig(name="echo", max_turns=3)
        rows = [{"id": "a", "messages": [{"role": "user", "content": "Hi."}]}]
        params = SamplingParams(temperature=1.0, max_tokens=5, n=2, seed=9)
        [[e0, e1]] = run_episodes(engine, [GenRequest(messages=rows[0]["messages"], params=params)], rows, cfg)
        prompt = engine.render_ids(rows[0]["messages"])
        obs = observation_ids(engine.tok, "user", "ok", None)
        for j, ep in enumerate((e0, e1)):
            assert ep.turns == 3 and len(ep.mask) == len(ep.response_ids) == len(ep.logps)
            # runs of sampled ids (mask 1) between environment ids (mask 0)
            runs: list[tuple[int, int, int]] = []
            for i, m in enumerate(ep.mask):
                if runs and runs[-1][0] == m:
                    runs[-1] = (m, runs[-1][1], i + 1)
                else:
                    runs.append((m, i, i + 1))
            assert [m for m, _, _ in runs] == [1, 0, 1, 0, 1]
            for m, a, b in runs:
                if m == 0:
                    env_ids = ep.response_ids[a:b]
                    eos_text = engine.tok.decode([ep.response_ids[a - 1]])
                    assert env_ids in (obs, observation_ids(engine.tok, "user", "ok", eos_text))
                    assert all(lp == 0.0 for lp in ep.logps[a:b])
            # every turn: the engine, given exactly the ids before it, samples exactly the ids after
            for turn, (_, a, b) in enumerate(r for r in runs if r[0] == 1):
                p = SamplingParams(temperature=1.0, max_tokens=5, n=1, seed=envmod._seed(9, j, turn))
                req = GenRequest(prompt_ids=prompt + ep.response_ids[:a], params=p, logprobs=0)
                [res] = engine.generate([req])
                assert [t.token_id for t in res.logprobs[0]] == ep.response_ids[a:b], (j, turn)
            assert ep.reward == float(len(ep.text))
    finally:
        engine.close()


class Record(Echo):
    """Echo that keeps every reply it was given."""

    seen: ClassVar[list[str]] = []

    def step(self, action):
        Record.seen.append(action)
        return super().step(action)


def test_the_environment_sees_the_stop_string_that_ended_a_turn(monkeypatch):
    """With `rollout.stop`, the engine's text leaves the stop string out, but the sampled ids end
    with it: the environment gets those ids decoded (a `</calc>` stop keeps the call's closing tag)."""
    monkeypatch.setitem(envmod.ENVIRONMENTS, "record", Record)
    engine = make_engine(EngineConfig(model=TINY))
    try:
        rows = [{"id": "a", "messages": [{"role": "user", "content": "Hi."}]}]

        def episode(stop: list[str]) -> tuple[envmod.Episode, list[str]]:
            Record.seen = []
            params = SamplingParams(temperature=1.0, max_tokens=8, n=1, seed=3, stop=stop)
            cfg = EnvConfig(name="record", max_turns=1)
            [[ep]] = run_episodes(engine, [GenRequest(messages=rows[0]["messages"], params=params)], rows, cfg)
            return ep, Record.seen

        free, [reply] = episode([])
        assert len(free.response_ids) == 8 and reply == engine.tok.decode(free.response_ids, skip_special_tokens=True)
        stop = reply[len(reply) // 2 : len(reply) // 2 + 2]  # two characters the seeded sample writes mid-reply
        cut, [seen] = episode([stop])
        assert stop in seen and seen == engine.tok.decode(cut.response_ids, skip_special_tokens=True)
        assert len(cut.response_ids) < 8 and cut.response_ids == free.response_ids[: len(cut.response_ids)]
        [res] = engine.generate(
            [
                GenRequest(
                    messages=rows[0]["messages"],
                    params=SamplingParams(temperature=1.0, max_tokens=8, n=1, seed=envmod._seed(3, 0, 0), stop=[stop]),
                )
            ]
        )
        assert stop not in res.texts[0] and seen.startswith(res.texts[0] + stop)  # the engine's text drops it
    finally:
        engine.close()


def test_environment_tokens_are_masked_from_the_loss():
    rows = [{"prompt_ids": [1, 2], "response_ids": [5, 6, 7, 8], "response_mask": [1, 0, 0, 1], "advantage": 1.0}]
    batch = get_objective("grpo").collate(rows, pad_id=0)
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 5, IGNORE, IGNORE, 8]]


def test_grpo_with_the_calculator_environment(tmp_path):
    prompts = write_calculator_tasks(str(tmp_path / "tasks.jsonl"), 4)
    data = grpo_config(
        tmp_path / "run",
        TINY,
        prompts,
        max_steps=2,
        environment={"name": "calculator", "max_turns": 2},
        asynchronous={"max_staleness": 1},
    )
    result = run_stage("grpo", data=data)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and "reward/environment" in recs[0]
    assert recs[0]["reward_mean"] == recs[0]["reward/environment"] == 0.0  # a random model never answers
    assert recs[1]["staleness_max"] == 1.0 and result.checkpoint
    with pytest.raises(ValueError, match="rewards"):
        from rayalign.rl.config import GRPOConfig

        GRPOConfig.model_validate({**data, "rewards": [{"name": "length"}]})
