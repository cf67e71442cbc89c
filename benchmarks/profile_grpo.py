"""Where a GRPO step's time goes: rayalign's synchronous run and TRL's `GRPOTrainer` under py-spy.

    python benchmarks/profile_grpo.py --steps 4                              # SmolLM2-135M
    python benchmarks/profile_grpo.py --model tiny-random:llama --steps 6    # the --quick model

Each side is `bench_grpo.py --side NAME` (the very run the benchmark times: same model, prompts,
group size, max tokens, reward, threads), run under ``py-spy record`` (wall-clock samples of the
Python stacks of every thread that is not idle, 100 per second). Every sample is put in the first
phase its stack shows, looked for in this order: generation (transformers' `generate`, with the
logits processors / token choice apart from the rest of it), backward, optimizer step, weight
sync to the engine, training forward (the model's forward outside `generate`), reward, and the
rest; start-up (imports, model loading, the prompt stage) is looked for first, then rayalign's one
checkpoint save after the last step (which `bench_grpo.py` leaves out of its timed steps and TRL,
saving nothing, does not do). Seconds per step are the phase's samples ÷ the rate ÷ steps; start-up
and the final save are reported in seconds for the whole run, apart from the step phases.
Writes benchmarks/results/<date>-grpo-profile-cpu[-quick].md (-quick: the tiny model); needs py-spy
(the dev extra).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from report import save_report  # noqa: E402  (imported first: the header's start load average)

RATE = 100
OTHER = "other (data, batching, bookkeeping, logging)"
STARTUP = "start-up (imports, model loading, prompt stage)"
SAVE = "final checkpoint save (once, after the last step)"
ONCE = (STARTUP, SAVE)  # per run, not per step

# (phase, substrings of a frame that put a sample in it); the first phase whose pattern appears
# anywhere in the stack wins, so a forward inside `generate` counts as generation
PHASES: list[tuple[str, tuple[str, ...]]] = [
    (
        STARTUP,
        ("_find_and_load", "from_pretrained", "load_model", "run_prepare", "_call_with_frames_removed"),
    ),
    # rayalign's one checkpoint after the last step (bench_grpo times none of it; TRL saves nothing)
    (SAVE, ("save_checkpoint (", "flush_checkpoint (", "save_extra (")),
    ("generation: sampling step (logits processors, token choice)", ("SeededSampler", "logits_process.py")),
    ("generation: the rest (decoder forward, cache, stopping)", ("generation/utils.py",)),
    ("backward", ("run_backward", "_engine_run_backward", "backward (torch/_tensor.py")),
    ("optimizer step", ("torch/optim/",)),
    ("weight sync to the engine", ("load_weights (", "load_state_dict (", "receive (")),
    ("training forward (log-probs, loss)", ("modeling_llama.py", "objectives/", "_get_per_token_logps")),
    ("reward", ("rl/rewards.py",)),
]


def phase_of(stack: str) -> str:
    for name, patterns in PHASES:
        if any(p in stack for p in patterns):
            return name
    return OTHER


def own_frame(stack: str) -> str:
    """The innermost frame of a stack that is rayalign's, TRL's, transformers' or torch's own code."""
    for frame in reversed(stack.split(";")):
        for lib in ("rayalign/", "trl/", "transformers/", "torch/"):
            if lib in frame:
                name, _, where = frame.partition(" (")
                return f"{name} ({lib}{where.split(lib, 1)[-1].rstrip(')')})"
    return stack.split(";")[-1]


def profile_side(side: str, a: argparse.Namespace, work: Path) -> tuple[Counter, Counter]:
    raw = work / f"{side}.txt"
    cmd = [sys.executable, str(BENCH / "bench_grpo.py"), "--side", side, "--work", str(work)]
    cmd += ["--result", str(work / f"{side}.json"), "--model", a.model, "--steps", str(a.steps)]
    cmd += ["--threads", str(a.threads)]
    spy = [a.py_spy, "record", "-r", str(RATE), "--format", "raw", "-o", str(raw), "--", *cmd]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run(spy, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    counts: Counter = Counter()
    other: Counter = Counter()  # what the unclassified samples were doing
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            phase = phase_of(stack)
            counts[phase] += int(n)
            if phase == OTHER:
                other[own_frame(stack)] += int(n)
    return counts, other


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sides", default="k0,trl")
    p.add_argument("--py-spy", default=str(Path(sys.executable).with_name("py-spy")))
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile-grpo-") as tmp:
        both = {side: profile_side(side, a, Path(tmp)) for side in a.sides.split(",")}
    res = {side: counts for side, (counts, _) in both.items()}
    sides = list(res)
    names = [n for n, _ in PHASES if n not in ONCE] + [OTHER]
    lines = [
        f"# GRPO step profile (py-spy): {', '.join(sides)}",
        "",
        f"Model `{a.model}`, {a.steps} steps per side, torch threads {a.threads}, the equal-work settings of "
        "`benchmarks/bench_grpo.py`; py-spy wall-clock samples at "
        f"{RATE}/s of non-idle threads. Seconds per step = samples ÷ {RATE} ÷ {a.steps} (the first step's "
        "warm-up included); start-up and the final checkpoint save are the whole run's.",
        "",
        "| phase | " + " | ".join(f"{s}: s/step | {s}: share of step" for s in sides) + " |",
        "|---|" + "---|---|" * len(sides),
    ]
    for name in names:
        cells = []
        for s in sides:
            step_total = sum(v for k, v in res[s].items() if k not in ONCE)
            cells += [f"{res[s][name] / RATE / a.steps:.2f}", f"{100 * res[s][name] / max(step_total, 1):.0f}%"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = []
    for s in sides:
        step_total = sum(v for k, v in res[s].items() if k not in ONCE)
        totals += [f"{step_total / RATE / a.steps:.2f}", "100%"]
    lines.append("| all step phases | " + " | ".join(totals) + " |")
    for name in ONCE:
        each = ", ".join(f"{s} {res[s][name] / RATE:.1f} s" for s in sides)
        lines += ["", f"{name[0].upper()}{name[1:]}, per side (not per step): {each}."]
    for side, (_, other) in both.items():
        top = ", ".join(f"`{frame}` {n / RATE / a.steps:.2f}" for frame, n in other.most_common(6))
        lines += ["", f'{side}, the largest parts of "other" (innermost library frame, s/step): {top}.']
    save_report(lines, "grpo-profile", quick=a.model.startswith("tiny-random"))


if __name__ == "__main__":
    main()
