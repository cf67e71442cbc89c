"""Does GRPO with the calculator tool environment raise the tool task's success rate?

    python benchmarks/bench_tools.py            # SmolLM2-135M-Instruct, 16 GRPO steps, 48 dev tasks
    python benchmarks/bench_tools.py --quick    # 4 steps, 16 dev tasks (checks the path, not learning)
    python benchmarks/bench_tools.py --seed 2 --name tools-seed2    # the same run from another seed
    python benchmarks/bench_tools.py --stop '</calc>' --name tools-stop    # every turn ends at its call

The task set is `rl.env.calculator_tasks` with a few-shot prompt (a system message stating the tool
format and one worked exchange: a ``<calc>`` call, its ``<result>``, the ``<answer>``): compute a
chained integer expression of `--task-steps` + 1 numbers; reward 1 when the final ``<answer>`` is
the exact value (the environment checks it; the sandboxed calculator evaluates the model's calls).
Training tasks and dev tasks are generated with different seeds and every dev expression that also
occurs among the training tasks is dropped, so the dev tasks are never trained on; nothing here is
tuned on them (the settings were fixed before the first run).

Success is measured on the dev tasks before and after a short full-model GRPO run, two ways:
greedy (one episode per task) and sampled at the training temperature (2 episodes per task,
seeded), each with its 95% bootstrap interval over tasks (`eval.stats.rate`) and the paired
after − before difference (`eval.stats.paired`, tasks resampled); then what the greedy episodes
did (called the calculator, gave an answer, got it right) and the first dev tasks that were right
before and wrong after, both episodes side by side. Writes
benchmarks/results/<date>-tools-cpu[-quick].md (the standard header: command, commit, load, versions).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"


def tasks(a: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    from rayalign.rl.env import calculator_tasks

    train = calculator_tasks(a.train_tasks, seed=1, steps=a.task_steps, few_shot=True)
    seen = {r["meta"]["expression"] for r in train}
    dev = [r for r in calculator_tasks(4 * a.dev_tasks, seed=2, steps=a.task_steps, few_shot=True)]
    dev = [r for r in dev if r["meta"]["expression"] not in seen][: a.dev_tasks]
    return train, dev


def success(model: str, rows: list[dict], temperature: float, n: int, a: argparse.Namespace) -> list[list]:
    """Per dev task: its `n` episodes (reward 1 = the right answer)."""
    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
    from rayalign.rl.env import EnvConfig, run_episodes

    engine = make_engine(EngineConfig(backend="hf", model=model, batch_size=16))
    try:
        reqs = [
            GenRequest(
                messages=r["messages"],
                params=SamplingParams(
                    temperature=temperature, max_tokens=a.max_tokens, n=n, seed=1000 + i, stop=a.stop
                ),
                request_id=r["id"],
            )
            for i, r in enumerate(rows)
        ]
        return run_episodes(engine, reqs, rows, EnvConfig(max_turns=a.max_turns))
    finally:
        engine.close()


def rates(episodes: list[list]) -> list[float]:
    return [sum(ep.reward for ep in eps) / len(eps) for eps in episodes]


def anatomy(episodes: list[list]) -> dict[str, int]:
    """What the greedy episodes did: called the calculator, gave an <answer>, got it right."""
    eps = [e[0] for e in episodes]
    return {
        "called the calculator": sum("<calc>" in e.text for e in eps),
        "gave an <answer>": sum("<answer>" in e.text for e in eps),
        "right answer": sum(e.reward >= 1 for e in eps),
        "turns (sum)": sum(e.turns for e in eps),
    }


def evaluate(model: str, dev: list[dict], a: argparse.Namespace) -> dict[str, list[list]]:
    return {
        "greedy": success(model, dev, 0.0, 1, a),
        "sampled": success(model, dev, a.temperature, 2, a),
    }


def train(work: Path, rows: list[dict], a: argparse.Namespace) -> tuple[str, list[dict], float]:
    from rayalign.rl.env import write_rows
    from rayalign.stages import run_stage

    out = work / "grpo"
    cfg = {
        "model": MODEL,
        "output_dir": str(out),
        "prompts": [write_rows(str(work / "train.jsonl"), rows)],
        "environment": {"name": "calculator", "max_turns": a.max_turns},
        "group_size": 4,
        "prompts_per_step": 4,
        "micro_batch_size": 2,
        "max_steps": a.steps,
        "seed": a.seed,
        "progress": False,
        "torch_threads": a.threads,
        "rollout": {"temperature": a.temperature, "max_tokens": a.max_tokens, "stop": a.stop},
        "engine": {"batch_size": 16},
        "aggregation": "token",
        "optim": {"lr": a.lr, "min_lr_ratio": 1.0, "max_grad_norm": 1.0},
    }
    t0 = time.perf_counter()
    run_stage("grpo", data=cfg)
    seconds = time.perf_counter() - t0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return str(out / "final"), recs, seconds


def report(a, dev, before, after, recs, seconds) -> list[str]:
    from rayalign.eval.stats import paired, rate

    def ci(r: dict) -> str:
        return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"

    lines = [
        f"# GRPO on the calculator tool task: dev success before and after ({MODEL})",
        "",
        f"Tasks: `calculator_tasks(steps={a.task_steps}, few_shot=True)`; {a.train_tasks} training tasks (seed 1), "
        f"{len(dev)} dev tasks (seed 2, none of their expressions among the training tasks). GRPO: full model, "
        f"{a.steps} steps × 4 tasks × 4 episodes, seed {a.seed}, ≤ {a.max_turns} turns of ≤ {a.max_tokens} tokens, "
        f"temperature {a.temperature}, stop strings {a.stop or 'none'} (training and dev), lr {a.lr:g}, "
        f"token-level averaging, torch threads {a.threads}; "
        f"training took {seconds:.0f} s. Intervals: 95% bootstrap over dev tasks.",
        "",
        "| dev success | before | after | after − before [95% CI] | p |",
        "|---|---|---|---|---|",
    ]
    for kind in ("greedy", "sampled"):
        d = paired(rates(after[kind]), rates(before[kind]))
        label = "greedy (1 episode per task)" if kind == "greedy" else f"sampled (T {a.temperature}, 2 per task)"
        lines.append(
            f"| {label} | {ci(rate(rates(before[kind])))} | {ci(rate(rates(after[kind])))} | "
            f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | {d['p_value']:.3f} |"
        )
    rewards = ", ".join(f"{r['reward_mean']:.2f}" for r in recs)
    lines += ["", f"Training reward (success of the step's 16 episodes) per step: {rewards}.", ""]
    was, now = anatomy(before["greedy"]), anatomy(after["greedy"])
    lines += [f"Greedy episodes on the {len(dev)} dev tasks:", "", "| | before | after |", "|---|---:|---:|"]
    lines += [f"| {k} | {was[k]} | {now[k]} |" for k in was]
    lost = [
        i for i, (b, f) in enumerate(zip(before["greedy"], after["greedy"], strict=True)) if b[0].reward > f[0].reward
    ]
    lines += ["", f"{len(lost)} dev tasks right before and wrong after (greedy); the first three, both episodes:", ""]
    for i in lost[:3]:
        lines += [f"- `{dev[i]['meta']['expression']}` = {dev[i]['meta']['answer']}"]
        for tag, eps in (("before", before), ("after", after)):
            text = eps["greedy"][i][0].text.replace("\n", " ⏎ ").replace("`", "'")
            lines.append(f"  - {tag}: `{text[:400]}`")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--dev-tasks", type=int, default=None)
    p.add_argument("--train-tasks", type=int, default=64)
    p.add_argument("--task-steps", type=int, default=3)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1, help="the GRPO run's seed (rollout sampling, data order)")
    p.add_argument("--stop", nargs="*", default=[], help="stop strings of every turn (training and dev), e.g. </calc>")
    p.add_argument("--name", default="tools", help="results file name: <date>-<name>-cpu.md")
    a = p.parse_args()
    # imported before the run: the results header's "at the start" load is taken when report is imported
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import save_report

    a.steps = a.steps or (4 if a.quick else 16)
    a.dev_tasks = a.dev_tasks or (16 if a.quick else 48)
    import torch

    torch.set_num_threads(a.threads)
    train_rows, dev = tasks(a)
    before = evaluate(MODEL, dev, a)
    print(f"[bench_tools] before: {[sum(rates(v)) / len(v) for v in before.values()]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        final, recs, seconds = train(Path(tmp), train_rows, a)
        after = evaluate(final, dev, a)
    save_report(report(a, dev, before, after, recs, seconds), a.name, a.quick)


if __name__ == "__main__":
    main()
