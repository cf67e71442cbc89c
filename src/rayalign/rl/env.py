"""Multi-turn rollouts with environments: the protocol, the token-in-token-out episode loop, a
sandboxed calculator tool and a verifiable multi-step arithmetic task set generated locally.

An environment (`Environment`) is reset with a prompt row and returns the episode's first messages;
each `step` takes the assistant's reply text and returns a `Step`: an observation (a message the
environment adds, e.g. a tool result), a reward and whether the episode is done. The reply text is
the decoded ids the engine sampled, the very ids trained on: with `rollout.stop` it ends with the
stop string that ended the turn (``stop: ["</calc>"]`` keeps the call's closing tag), where an
engine's returned text would leave it out.

`run_episodes` runs G episodes per prompt on an engine, token in, token out: the prompt is rendered
to ids once; every turn the engine continues from the episode's ids (``GenRequest.prompt_ids``) and
the ids it sampled are appended as they are (never a re-tokenisation of their text); the
environment's observation is appended as the chat template's own tokens for that turn (the text the
template puts between the end of an assistant reply and the start of the next one, tokenised on
its own). The training row is the prompt + every id after it, with a loss mask that is 1 on the
sampled ids and 0 on the environment's, and the engine's log-prob of each sampled id.

The built-in ``calculator`` environment: the assistant may call ``<calc>EXPR</calc>`` (the result
comes back as ``<result>…</result>``) and ends with ``<answer>N</answer>``: reward 1 when N is the
task's answer, else 0. EXPR is evaluated by `sandbox_eval`: a separate Python process (isolated
mode, empty environment, a fresh temporary directory) with CPU-time, address-space, file-size and
open-file limits, which evaluates arithmetic only — numbers, + − × ÷ // % ** and parentheses,
walked over the parsed syntax tree (no names, calls or attributes, so no file or network access).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import Field

from rayalign.config import Cfg
from rayalign.generate.engine import GenRequest, SamplingParams


class EnvConfig(Cfg):
    """``environment: {name: calculator, max_turns: 4}``: multi-turn episodes instead of one reply.
    ``observation_role``: the chat role of the environment's messages; ``time_limit`` (CPU seconds)
    and ``memory_mb``: the sandbox's limits per tool call."""

    name: str = "calculator"  # the environment (built in: calculator, a sandboxed arithmetic tool)
    max_turns: int = Field(4, ge=1)  # model turns per episode at most
    observation_role: str = "user"  # chat role of the environment's messages
    time_limit: float = Field(2.0, gt=0)  # CPU seconds per sandboxed tool call
    memory_mb: int = Field(256, ge=32)  # memory limit of a sandboxed tool call (MiB)


@dataclass
class Step:
    observation: str | None
    reward: float
    done: bool


class Environment(Protocol):
    def reset(self, row: dict) -> list[dict]: ...

    def step(self, action: str) -> Step: ...


@dataclass
class Episode:
    """One sampled episode after the prompt: ids (sampled and environment), the loss mask (1 =
    sampled), the engine's log-prob per id (0 on environment ids), the summed reward."""

    response_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    text: str = ""


_EVALUATOR = r"""
import ast, operator, sys
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
       ast.USub: operator.neg, ast.UAdd: operator.pos}
def ev(n):
    if isinstance(n, ast.Expression):
        return ev(n.body)
    if isinstance(n, ast.Constant) and type(n.value) in (int, float):
        return n.value
    if isinstance(n, ast.BinOp) and type(n.op) in OPS:
        return OPS[type(n.op)](ev(n.left), ev(n.right))
    if isinstance(n, ast.UnaryOp) and type(n.op) in OPS:
        return OPS[type(n.op)](ev(n.operand))
    raise ValueError("only numbers and + - * / // % ** ( ) are allowed, not " + type(n).__name__)
try:
    print(repr(ev(ast.parse(sys.stdin.read(), mode="eval"))))
except MemoryError:
    print("error: memory limit")
except Exception as e:
    print("error: " + type(e).__name__ + ": " + str(e)[:200])
"""


def _limits(cpu_seconds: float, memory_mb: int):
    def apply() -> None:
        import resource

        cpu = max(1, int(cpu_seconds + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    return apply


def sandbox_eval(expr: str, time_limit: float = 2.0, memory_mb: int = 256) -> str:
    """The value of an arithmetic expression as text, or ``error: …`` (bad syntax, a forbidden
    construct, the time or memory limit); never raises for what the expression holds."""
    if len(expr) > 1000:
        return "error: expression longer than 1000 characters"
    with tempfile.TemporaryDirectory(prefix="rayalign-calc-") as cwd:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _EVALUATOR],
                input=expr,
                capture_output=True,
                text=True,
                timeout=time_limit + 2.0,  # wall clock: CPU time is limited by the rlimit
                env={},
                cwd=cwd,
                preexec_fn=_limits(time_limit, memory_mb),  # limits set in the child only
            )
        except subprocess.TimeoutExpired:
            return "error: time limit"
    out = done.stdout.strip()
    if done.returncode != 0 or not out:
        return "error: time limit" if done.returncode in (-9, -24, 152) else "error: evaluation failed"
    return out


class CalculatorEnv:
    """``<calc>EXPR</calc>`` → ``<result>value</result>``; ``<answer>N</answer>`` ends the episode
    with reward 1 if N equals the row's ``meta.answer`` (within 1e-6), else 0; a reply with
    neither ends it with 0."""

    CALL = re.compile(r"<calc>(.*?)</calc>", re.S)
    ANSWER = re.compile(r"<answer>\s*(-?[\d.]+)\s*</answer>")

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self.answer: float | None = None

    def reset(self, row: dict) -> list[dict]:
        from rayalign.rl.rewards import prompt_meta

        meta = prompt_meta(row)
        if "answer" not in meta:
            raise ValueError(f"prompt {row.get('id')!r}: the calculator environment needs meta.answer")
        self.answer = float(meta["answer"])
        return list(row["messages"])

    def step(self, action: str) -> Step:
        found = self.ANSWER.search(action)
        if found:
            try:
                ok = abs(float(found.group(1)) - (self.answer or 0.0)) <= 1e-6
            except ValueError:
                ok = False
            return Step(None, 1.0 if ok else 0.0, True)
        call = self.CALL.search(action)
        if call:
            result = sandbox_eval(call.group(1), self.cfg.time_limit, self.cfg.memory_mb)
            return Step(f"<result>{result}</result>", 0.0, False)
        return Step(None, 0.0, True)


ENVIRONMENTS = {"calculator": CalculatorEnv}


def make_env(cfg: EnvConfig) -> Environment:
    if cfg.name not in ENVIRONMENTS:
        raise ValueError(f"environment.name {cfg.name!r}: known {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[cfg.name](cfg)


def observation_ids(tok, role: str, content: str, after_eos: str | None) -> list[int]:
    """The chat template's tokens between the end of an assistant reply and the start of the next
    one, with a `role` message holding `content` in between. `after_eos`: the text of the end
    token the reply was sampled with (the template's end-of-turn text is then not repeated)."""
    mark = "\x00REPLY\x00"
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": mark},
        {"role": role, "content": content},
    ]
    full = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    after = full[full.index(mark) + len(mark) :]
    if after_eos and after.startswith(after_eos):
        after = after[len(after_eos) :]
    return list(tok(after, add_special_tokens=False)["input_ids"])


def _seed(seed: int | None, sample: int, turn: int) -> int:
    digest = hashlib.sha256(f"{seed}:{sample}:{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_episodes(engine: Any, requests: list[GenRequest], rows: list[dict], cfg: EnvConfig) -> list[list[Episode]]:
    """``requests[i].params.n`` episodes of prompt row ``rows[i]`` each (see the module docstring);
    the turns of all live episodes go to the engine together. Sample j's turn t is seeded from
    (the request's seed, j, t)."""
    tok = engine.tok
    live: list[tuple[int, int, Any, list[int], Episode, GenRequest]] = []
    out: list[list[Episode]] = []
    for i, (req, row) in enumerate(zip(requests, rows, strict=True)):
        out.append([])
        for j in range(req.params.n):
            env = make_env(cfg)
            prompt = engine.render_ids(env.reset(row))
            ep = Episode()
            out[i].append(ep)
            live.append((i, j, env, list(prompt), ep, req))
    for turn in range(cfg.max_turns):
        if not live:
            break
        reqs = [
            GenRequest(
                prompt_ids=ids,
                params=SamplingParams(**{**req.params.model_dump(), "n": 1, "seed": _seed(req.params.seed, j, turn)}),
                request_id=f"{req.request_id}/{j}/{turn}",
                adapter=req.adapter,
                logprobs=0,
            )
            for _, j, _, ids, _, req in live
        ]
        results = engine.generate(reqs)
        still = []
        for (i, j, env, ids, ep, req), res in zip(live, results, strict=True):
            if not res.ok or res.logprobs is None:
                raise RuntimeError(f"episode {req.request_id}/{j} turn {turn}: {res.error}")
            sampled = [t.token_id for t in res.logprobs[0]]
            ids += sampled
            ep.response_ids += sampled
            ep.mask += [1] * len(sampled)
            ep.logps += [t.logprob for t in res.logprobs[0]]
            reply = tok.decode(sampled, skip_special_tokens=True)  # the stop string included, if one ended it
            ep.text += reply
            ep.turns += 1
            step = env.step(reply)
            ep.reward += step.reward
            if step.done or step.observation is None or turn == cfg.max_turns - 1:
                continue
            ended = sampled and sampled[-1] in engine.eos_ids
            obs = observation_ids(
                tok, cfg.observation_role, step.observation, tok.decode([sampled[-1]]) if ended else None
            )
            if len(ids) + len(obs) + req.params.max_tokens > engine.max_context():
                continue  # no room for another turn
            ids += obs
            ep.response_ids += obs
            ep.mask += [0] * len(obs)
            ep.logps += [0.0] * len(obs)
            still.append((i, j, env, ids, ep, req))
        live = still
    return out


FEW_SHOT_SYSTEM = (
    "You can use a calculator. To use it, write <calc>expression</calc> and stop; the result comes back as "
    "<result>value</result>. Then give the final number as <answer>number</answer>."
)
# the one worked exchange a few-shot prompt shows (its expression has a shape the generator never makes)
FEW_SHOT_EXAMPLE = [
    {"role": "user", "content": "Compute ((14 + 5) * 3)."},
    {"role": "assistant", "content": "<calc>((14 + 5) * 3)</calc>"},
    {"role": "user", "content": "<result>57</result>"},
    {"role": "assistant", "content": "<answer>57</answer>"},
]


def calculator_tasks(n: int, seed: int = 0, steps: int = 2, few_shot: bool = False) -> list[dict]:
    """`n` prompt rows (the `prompts` kind): a chained integer expression of `steps` + 1 numbers,
    its exact value in ``meta.answer`` (a verifiable reward needs no model to judge it). With
    `few_shot` the prompt is a system message stating the tool format, one worked exchange (a
    calculator call, its result, the answer) and then the question, which a small instruct model
    needs before it ever calls the tool."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        expr = str(rng.randint(2, 99))
        for _ in range(steps):
            op = rng.choice(["+", "-", "*"])
            expr = f"({expr} {op} {rng.randint(2, 99)})"
        value = _arith(expr)
        if few_shot:
            messages = [
                {"role": "system", "content": FEW_SHOT_SYSTEM},
                *FEW_SHOT_EXAMPLE,
                {"role": "user", "content": f"Compute {expr}."},
            ]
        else:
            question = (
                f"Compute {expr}. You may use a calculator: write <calc>expression</calc> and the result comes "
                "back as <result>value</result>. Give the final number as <answer>number</answer>."
            )
            messages = [{"role": "user", "content": question}]
        rows.append({"id": f"calc-{seed}-{k}", "messages": messages, "meta": {"answer": value, "expression": expr}})
    return rows


def _arith(expr: str) -> int:
    """The value of the generator's own +, −, × expressions (integers, parenthesised)."""
    import ast
    import operator

    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant):
            return int(n.value)  # type: ignore[arg-type]  # the generator writes integers only
        if isinstance(n, ast.BinOp):
            return ops[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError(expr)

    return ev(ast.parse(expr, mode="eval").body)


def write_calculator_tasks(path: str, n: int, seed: int = 0, steps: int = 2, few_shot: bool = False) -> str:
    return write_rows(path, calculator_tasks(n, seed, steps, few_shot))


def write_rows(path: str, rows: list[dict]) -> str:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path
