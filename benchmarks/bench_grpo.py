"""`rayalign grpo` vs TRL's `GRPOTrainer` at equal work, and asynchronous vs synchronous rollouts.

    python benchmarks/bench_grpo.py            # SmolLM2-135M, 6 steps per side
    python benchmarks/bench_grpo.py --quick    # the tiny random llama, 6 steps per side

Equal work on both sides: the same model (fp32, CPU), prompts (8 "Tell me about X." prompts), group
size 4, 4 prompts per step (16 completions), max 24 new tokens, temperature 1, the same reward
(rayalign's `length` penalty, target 8 characters, called from TRL's reward function too), the
same number of optimizer steps, lr 1e-5, one update per rollout batch, no KL term, per-sequence
loss averaging (TRL ``loss_type="grpo"``), no gradient checkpointing; both sample with Hugging Face
`generate` (TRL without vLLM, rayalign's in-process hf engine). Every side runs in a fresh
interpreter; steps/s is the steady state, (steps − 1) ÷ the wall time from the end of the first step
to the end of the last (model loading, engine start, the first step's warm-up and the final save
excluded on both sides); CPU s/step the process's CPU seconds over the same steps (all threads:
less sensitive to a loaded box than wall time); peak memory the side's peak resident set (VmHWM).

The bf16 variant (sides ``k0-bf16``, ``trl-bf16``): TRL with ``bf16=True`` (bf16 autocast of
generation and training), rayalign with its rollout engine in bf16 and TIS for the engine's
log-probs (its trainer stays fp32 on CPU). ``--sides`` picks the runs (default: all).

Then rayalign alone with ``asynchronous.max_staleness`` 0 (synchronous), 1 and 2: wall time to the
same steps and the reward per step. On one CPU box generation and training share the same cores
(the background rollout thread and the trainer split the torch threads), so the overlap gains
little here; with the engines on their own devices (engine actors, `engines` / `engine_gpus`) the
step time becomes max(sampling, training) instead of their sum.
Writes benchmarks/results/<date>-grpo-cpu[-quick].md (<date>-grpo-bf16-cpu[-quick].md when only
bf16 sides run); the header names the command, the commit, the load average and the library
versions. ``--steps 21`` gives 20 timed steps per side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["cats", "rain", "bread", "music", "rivers", "stars", "chess", "tea"]
GROUP, PROMPTS_PER_STEP, MAX_TOKENS, LR, TARGET = 4, 4, 24, 1e-5, 8
REWARD = {"name": "length", "params": {"target": TARGET, "unit": "chars"}}


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_prompts(path: Path) -> Path:
    with path.open("w") as fh:
        for i, t in enumerate(TOPICS):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {t}."}) + "\n")
    return path


def side_rayalign(work: Path, model: str, steps: int, threads: int, staleness: int, bf16: bool = False) -> dict:
    from rayalign.stages import run_stage

    out = work / f"rayalign-k{staleness}{'-bf16' if bf16 else ''}"
    cfg = {
        "model": model,
        "output_dir": str(out),
        "prompts": [str(write_prompts(work / "prompts.jsonl"))],
        "group_size": GROUP,
        "prompts_per_step": PROMPTS_PER_STEP,
        "micro_batch_size": PROMPTS_PER_STEP,
        "max_steps": steps,
        "seed": 1,
        "progress": False,
        "torch_threads": threads,
        "rollout": {"temperature": 1.0, "max_tokens": MAX_TOKENS},
        # bf16: the rollout engine holds the policy in bf16 (each sync casts the trainer's weights);
        # the trainer itself stays fp32 on CPU, and TIS corrects for the engine's log-probs
        "engine": {"batch_size": PROMPTS_PER_STEP, "dtype": "bf16" if bf16 else "fp32"},
        "rewards": [REWARD],
        "optim": {"lr": LR, "min_lr_ratio": 1.0},
        "checkpoint": {"export": False},
        "asynchronous": {"max_staleness": staleness},
        "off_policy": {"correction": "tis" if staleness or bf16 else "none"},
    }
    run_stage("grpo", data=cfg)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    wall = recs[-1]["time"] - recs[0]["time"]
    return {
        "wall_s": wall,
        "steps_per_s": (steps - 1) / wall,
        "cpu_s_per_step": (recs[-1]["cpu_time"] - recs[0]["cpu_time"]) / (steps - 1),
        "peak_rss_mib": peak_rss_mib(),
        "rewards": [r["reward_mean"] for r in recs],
        "staleness": [r["staleness_mean"] for r in recs],
    }


def side_trl(work: Path, model: str, steps: int, threads: int, bf16: bool = False) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayalign.models.loader import load_tokenizer, resolve_model_path
    from rayalign.rl.rewards import Rewards, RewardSpec

    score = Rewards([RewardSpec.model_validate(REWARD)])

    def reward(completions, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return score([{} for _ in texts], texts)[0]

    path = resolve_model_path(model)
    rows = [{"prompt": [{"role": "user", "content": f"Tell me about {t}."}]} for t in TOPICS]
    args = GRPOConfig(
        output_dir=str(work / f"trl{'-bf16' if bf16 else ''}"),
        per_device_train_batch_size=GROUP * PROMPTS_PER_STEP,
        num_generations=GROUP,
        max_completion_length=MAX_TOKENS,
        temperature=1.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_steps=steps,
        beta=0.0,
        loss_type="grpo",
        num_iterations=1,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=bf16,  # bf16 autocast of generation and training (accelerate's mixed precision on CPU)
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=1,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype="float32"),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(model),
    )
    ends: list[tuple[float, float]] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time()))

    trainer.add_callback(StepEnds())
    trainer.train()
    wall = ends[-1][0] - ends[0][0]
    logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "wall_s": wall,
        "steps_per_s": (steps - 1) / wall,
        "cpu_s_per_step": (ends[-1][1] - ends[0][1]) / (steps - 1),
        "peak_rss_mib": peak_rss_mib(),
        "rewards": logged,
    }


def run_side(name: str, work: Path, a: argparse.Namespace) -> dict:
    """Each side in a fresh interpreter, so one side's allocations never inflate another's peak."""
    out = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--side", name, "--work", str(work), "--result", str(out)]
    cmd += ["--model", a.model, "--steps", str(a.steps), "--threads", str(a.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"side {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def pair_rows(ra: dict, trl: dict, steps: int) -> list[str]:
    return [
        "| | rayalign grpo (sync) | TRL GRPOTrainer | ratio (rayalign / TRL) | goal |",
        "|---|---|---|---|---|",
        f"| steps/s | {ra['steps_per_s']:.3f} | {trl['steps_per_s']:.3f} | "
        f"{ra['steps_per_s'] / trl['steps_per_s']:.2f}× | ≥ 2× |",
        f"| CPU seconds per step (all threads) | {ra['cpu_s_per_step']:.2f} | {trl['cpu_s_per_step']:.2f} | "
        f"{trl['cpu_s_per_step'] / ra['cpu_s_per_step']:.2f}× fewer | |",
        f"| peak memory (RSS, MiB) | {ra['peak_rss_mib']:.0f} | {trl['peak_rss_mib']:.0f} | "
        f"{ra['peak_rss_mib'] / trl['peak_rss_mib']:.2f}× | ≤ 1.0× |",
        f"| wall time, steps 2 … {steps} (s) | {ra['wall_s']:.1f} | {trl['wall_s']:.1f} | | |",
        f"| reward per step | {', '.join(f'{x:.2f}' for x in ra['rewards'])} | "
        f"{', '.join(f'{x:.2f}' for x in trl['rewards'])} | | |",
    ]


def report(a: argparse.Namespace, res: dict[str, dict], load: tuple[float, float]) -> list[str]:
    lines = [
        f"# GRPO: rayalign vs TRL GRPOTrainer, async vs sync — {dt.date.today().isoformat()}",
        "",
        f"Torch threads per side {a.threads}; {os.cpu_count()} CPUs ({platform.machine()}). 1-min load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end: the box is shared by other busy processes, so "
        "compare the ratios of one run, not absolute numbers. Sides run one after another, each in a fresh "
        "interpreter, in this order: " + ", ".join(res) + ".",
        "",
        f"Equal work: model `{a.model}`, {PROMPTS_PER_STEP} prompts × {GROUP} samples per step, "
        f"≤ {MAX_TOKENS} new tokens, temperature 1, length reward (target {TARGET} chars), {a.steps} steps, "
        "one update per batch, β = 0, per-sequence averaging, HF generation on both sides.",
    ]
    if "k0" in res and "trl" in res:
        lines += ["", "## fp32 (both sides)", "", *pair_rows(res["k0"], res["trl"], a.steps)]
    if "k0-bf16" in res and "trl-bf16" in res:
        lines += [
            "",
            "## bf16 (both sides)",
            "",
            "TRL: `bf16=True` (bf16 autocast of generation and training). rayalign: the rollout engine holds "
            "the policy in bf16 (each sync casts the trainer's weights) and TIS (cap 2) corrects for its "
            "log-probs; its trainer stays fp32 (no CPU autocast in the training engine), so rayalign does the "
            "costlier training here.",
            "",
            *pair_rows(res["k0-bf16"], res["trl-bf16"], a.steps),
        ]
    ks = [k for k in (0, 1, 2) if f"k{k}" in res]
    if len(ks) > 1 and 0 in ks:
        base = res["k0"]
        lines += [
            "",
            "## Asynchronous rollouts (rayalign, `asynchronous.max_staleness` k)",
            "",
            f"| k | wall time, steps 2 … {a.steps} (s) | speed-up vs k = 0 | CPU s/step | reward per step | "
            "staleness per step |",
            "|---|---|---|---|---|---|",
        ]
        for k in ks:
            r = res[f"k{k}"]
            lines.append(
                f"| {k} | {r['wall_s']:.1f} | {base['wall_s'] / r['wall_s']:.2f}× | {r['cpu_s_per_step']:.2f} | "
                f"{', '.join(f'{x:.3f}' for x in r['rewards'])} | {', '.join(f'{x:g}' for x in r['staleness'])} |"
            )
        lines += [
            "",
            "Generation and training share the same 2 cores here, so overlapping them can only fill the "
            "idle gaps of each side; on separate devices (engine actors on their own GPUs) a step costs "
            "max(sampling, training) instead of their sum.",
        ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--sides",
        default="k0,trl,k1,k2,k0-bf16,trl-bf16",
        help="runs, in order: kN = rayalign at max_staleness N, trl = TRL; -bf16: the bf16 variant of both "
        "(needs k0 and trl; the async table needs k1, k2)",
    )
    p.add_argument("--side")
    p.add_argument("--work")
    p.add_argument("--result")
    a = p.parse_args()
    a.model = a.model or ("tiny-random:llama" if a.quick else "builtin:smollm2-135m-instruct")
    if a.side:
        import torch

        torch.set_num_threads(a.threads)
        work = Path(a.work)
        name, bf16 = a.side.removesuffix("-bf16"), a.side.endswith("-bf16")
        if name == "trl":
            out = side_trl(work, a.model, a.steps, a.threads, bf16)
        else:
            out = side_rayalign(work, a.model, a.steps, a.threads, int(name[1:]), bf16)
        Path(a.result).write_text(json.dumps(out))
        return
    # imported before the run: the results header's "at the start" load is taken when report is imported
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import save_report

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        res = {name: run_side(name, work, a) for name in a.sides.split(",")}

    # the bf16 pair alone writes a file of its own (it does not replace the fp32 / async report)
    name = "grpo-bf16" if all(side.endswith("-bf16") for side in res) else "grpo"
    save_report(report(a, res, (load_before[0], os.getloadavg()[0])), name, a.quick)


if __name__ == "__main__":
    main()
