"""`rayalign prefer` (precomputed reference) vs TRL's `DPOTrainer` with its defaults: pairs/s and peak memory.

    python benchmarks/bench_prefer.py            # 10 steps per side (80 pairs), + rayalign with activation checkpointing
    python benchmarks/bench_prefer.py --quick    # 3 steps per side (24 pairs; ~5 min on an idle 2-CPU box)

rayalign trains on prefix-tree packed pairs (its default: each prompt computed once for its chosen and
rejected response, a shared system prompt once per row, no padding); plain packing
(`objective.share_prefix: false`) and the padded layout (`objective.pack: false`) are measured too.
Besides pairs/s (wall clock, load-sensitive) every side reports CPU seconds per pair of its process.

Same model (builtin:smollm2-135m-instruct, fp32), same pairs (the first steps × 8 good rows of the
bundled rayjobs/data/pairs.jsonl — exactly one epoch, so the reference pass scores what is trained), same machine, same batch (TRL's default: 8 pairs per step, no accumulation), same
loss (sigmoid DPO, β = 0.1) and learning rate (TRL's default 1e-6). TRL runs with every default it
accepts here; on a CPU it refuses its bf16 default, so bf16=False and use_cpu=True are set — and its
default gradient checkpointing stays on. rayalign runs `prefer` in-process on the reference stage's
output (run first, timed on its own). Every side runs torch on `--threads` threads (default 1: on a
shared 2-core box a 2-thread process thrashes when the other processes take its second core).

Each side runs in its own fresh subprocess. pairs/s is the steady state: pairs of steps 2..N over
the time from the end of step 1 to the end of step N (step 1 pays one-off warm-up). Peak memory is
the subprocess's peak resident set (VmHWM, Linux) — model, reference model where held, gradients,
optimizer state, activations. Prints a table and writes benchmarks/results/<date>-prefer-cpu.md.
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
MODEL = "builtin:smollm2-135m-instruct"
PAIRS = ROOT / "rayjobs" / "data" / "pairs.jsonl"
BATCH = 8  # TRL's default per_device_train_batch_size
BETA, LR = 0.1, 1e-6  # TRL's defaults


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def steady_pairs_per_s(step_times: list[float]) -> float:
    """Pairs of steps 2..N over the time between the end of step 1 and the end of step N."""
    if len(step_times) < 2:
        return float("nan")
    return BATCH * (len(step_times) - 1) / (step_times[-1] - step_times[0])


def cpu_s_per_pair(cpu_times: list[float]) -> float:
    """CPU seconds of the process per pair over steps 2..N: unlike pairs/s, insensitive to other load."""
    if len(cpu_times) < 2:
        return float("nan")
    return (cpu_times[-1] - cpu_times[0]) / (BATCH * (len(cpu_times) - 1))


def write_pairs(work: Path, n: int) -> Path:
    """The first n good pairs of the bundled file (its bad rows are left out: both sides see the same data)."""
    good = []
    for line in PAIRS.read_bytes().splitlines():
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(row, dict) and str(row.get("id", "")).startswith("pair-"):
            good.append(line.decode())
    if n > len(good):
        raise SystemExit(f"asked for {n} pairs, the bundled file has {len(good)} good ones")
    path = work / "pairs.jsonl"
    path.write_text("\n".join(good[:n]) + "\n")
    return path


def side_reference(work: Path, steps: int) -> dict:
    from rayalign.prefer.reference import ReferenceConfig, run_reference

    t0 = time.perf_counter()
    pairs = write_pairs(work, steps * BATCH)
    m = run_reference(
        ReferenceConfig(
            inputs=[str(pairs)],
            output=str(work / "reference"),
            model=MODEL,
            batch_size=BATCH,
            pool={"workers": 0, "shard_rows": 1024},
        ),
        log=lambda s: None,
    )
    seconds = time.perf_counter() - t0
    pairs = m.counts.out_rows if m.counts else 0
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds, "peak_rss_mib": peak_rss_mib()}


def side_rayalign(
    work: Path, steps: int, checkpointing: bool = False, pack: bool = True, share_prefix: bool = True
) -> dict:
    import torch

    from rayalign.prefer.stages import PreferConfig, run_prefer

    out = work / (
        "rayalign-ckpt"
        if checkpointing
        else "rayalign-padded"
        if not pack
        else "rayalign"
        if share_prefix
        else "rayalign-plain"
    )
    cfg = PreferConfig.model_validate(
        dict(
            activation_checkpointing=checkpointing,
            model=MODEL,
            output_dir=str(out),
            data={"path": str(work / "reference"), "shuffle": True},
            objective={"name": "dpo", "beta": BETA, "pack": pack, "share_prefix": share_prefix},
            micro_batch_size=BATCH,
            grad_accum=1,
            max_steps=steps,
            optim={"lr": LR, "min_lr_ratio": 1.0, "warmup_steps": 0},
            eval_pairs=0,
            progress=False,
            log_every=1,
            torch_threads=torch.get_num_threads(),
        )
    )
    t0 = time.perf_counter()
    result = run_prefer(cfg, log=lambda s: None)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {
        "steps": int(result.metrics["step"]),
        "pairs_per_s": steady_pairs_per_s([r["time"] for r in records]),
        "cpu_s_per_pair": cpu_s_per_pair([r["cpu_time"] for r in records]),
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
        "final_loss": result.metrics["loss"],
    }


def side_trl(work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rayalign.data.shards import read_dataset
    from rayalign.models.loader import resolve_model_path

    # the very pairs rayalign trains on (validated by the reference stage), in TRL's conversational format
    rows = read_dataset(work / "reference", columns=["prompt", "chosen", "rejected"]).to_pylist()
    data = Dataset.from_list(
        [
            {
                "prompt": r["prompt"],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    path = resolve_model_path(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    times: list[float] = []
    cpu: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.time())
            cpu.append(time.process_time())

    args = DPOConfig(
        output_dir=str(work / "trl"),
        max_steps=steps,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[StepClock()])
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    return {
        "steps": len(times),
        "pairs_per_s": steady_pairs_per_s(times),
        "cpu_s_per_pair": cpu_s_per_pair(cpu),
        "wall_s": wall,
        "peak_rss_mib": peak_rss_mib(),
        "final_loss": result.training_loss,
        "defaults": {
            "gradient_checkpointing": args.gradient_checkpointing,
            "loss_type": args.loss_type,
            "beta": args.beta,
            "learning_rate": args.learning_rate,
            "max_length": args.max_length,
            "precompute_ref_log_probs": args.precompute_ref_log_probs,
        },
    }


SIDES = {
    "reference": side_reference,
    "rayalign": side_rayalign,
    "trl": side_trl,
    "rayalign-padded": lambda work, steps: side_rayalign(work, steps, pack=False),
    "rayalign-plain": lambda work, steps: side_rayalign(work, steps, share_prefix=False),
    "rayalign-ckpt": lambda work, steps: side_rayalign(work, steps, checkpointing=True),
}


def run_side(side: str, work: Path, steps: int, threads: int) -> dict:
    """Each side in a fresh interpreter, so one side's allocations never inflate the other's peak."""
    out = work / f"{side}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--side",
            side,
            "--work",
            str(work),
            "--steps",
            str(steps),
            "--result",
            str(out),
            "--threads",
            str(threads),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def report(
    ref: dict,
    ra: dict,
    pad: dict,
    plain: dict,
    ck: dict | None,
    trl: dict,
    steps: int,
    load: tuple[float, float],
    threads: int,
) -> str:
    speed = ra["pairs_per_s"] / trl["pairs_per_s"]
    mem = ra["peak_rss_mib"] / trl["peak_rss_mib"]
    lines = [
        f"# prefer vs TRL DPOTrainer — {dt.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"model {MODEL} (fp32); {BATCH} pairs/step, {steps} steps per side, sigmoid DPO β={BETA}, lr {LR}. "
        f"torch threads per side: {threads}. 1-min load average {load[0]:.1f} at the start, {load[1]:.1f} "
        f"at the end (the box is shared: "
        f"compare the ratio, not the absolute numbers).",
        "",
        "| | rayalign prefer (precomputed ref, prefix-tree packed pairs) | TRL DPOTrainer (defaults) | ratio (rayalign / TRL) "
        "| goal |",
        "|---|---|---|---|---|",
        f"| steady-state pairs/s | {ra['pairs_per_s']:.2f} | {trl['pairs_per_s']:.2f} | {speed:.2f}× | ≥ 3× |",
        f"| CPU seconds per pair (load-insensitive) | {ra['cpu_s_per_pair']:.2f} | {trl['cpu_s_per_pair']:.2f} | "
        f"{trl['cpu_s_per_pair'] / ra['cpu_s_per_pair']:.2f}× fewer | ≥ 3× |",
        f"| peak memory (RSS, MiB) | {ra['peak_rss_mib']:.0f} | {trl['peak_rss_mib']:.0f} | {mem:.2f}× | ≤ 1.0× |",
        f"| wall time of the training call (s) | {ra['wall_s']:.1f} | {trl['wall_s']:.1f} | "
        f"{ra['wall_s'] / trl['wall_s']:.2f}× | |",
        f"| loss (rayalign: last step; TRL: mean of its steps) | {ra['final_loss']:.4f} | {trl['final_loss']:.4f} | | |",
        "",
        f"Padded pairs (`objective.pack: false`, one sequence per row): {pad['pairs_per_s']:.2f} pairs/s "
        f"({pad['pairs_per_s'] / trl['pairs_per_s']:.2f}× TRL), peak {pad['peak_rss_mib']:.0f} MiB "
        f"({pad['peak_rss_mib'] / trl['peak_rss_mib']:.2f}× TRL), {pad['cpu_s_per_pair']:.2f} CPU s/pair; "
        f"loss {pad['final_loss']:.4f}.",
        "",
        f"Plain packing (`objective.share_prefix: false`: whole sequences packed, every prompt computed for "
        f"both responses): {plain['pairs_per_s']:.2f} pairs/s ({plain['pairs_per_s'] / trl['pairs_per_s']:.2f}× "
        f"TRL), peak {plain['peak_rss_mib']:.0f} MiB ({plain['peak_rss_mib'] / trl['peak_rss_mib']:.2f}× TRL), "
        f"{plain['cpu_s_per_pair']:.2f} CPU s/pair; loss {plain['final_loss']:.4f}.",
        "",
        (
            f"With activation checkpointing on (TRL's default, `activation_checkpointing: true`): "
            f"{ck['pairs_per_s']:.2f} pairs/s ({ck['pairs_per_s'] / trl['pairs_per_s']:.2f}× TRL), peak "
            f"{ck['peak_rss_mib']:.0f} MiB ({ck['peak_rss_mib'] / trl['peak_rss_mib']:.2f}× TRL)."
            if ck
            else "rayalign with activation checkpointing (TRL's default) is measured without --quick."
        ),
        "",
        f"The reference pass (run once, before training; its own process): {ref['pairs']} pairs in "
        f"{ref['seconds']:.1f} s = {ref['pairs_per_s']:.1f} pairs/s, peak RSS {ref['peak_rss_mib']:.0f} MiB. "
        f"Counted in, one epoch ({ref['pairs']} pairs) of rayalign costs {ref['pairs'] / ref['pairs_per_s'] + ref['pairs'] / ra['pairs_per_s']:.0f} s "
        f"vs {ref['pairs'] / trl['pairs_per_s']:.0f} s for TRL.",
        "",
        f"TRL settings in effect: {json.dumps(trl['defaults'])}; bf16=False and use_cpu=True because TRL refuses "
        f"its bf16 default on a CPU.",
        "",
        "Where the difference comes from: rayalign never runs the reference model during training (its "
        "log-probs are columns of the data), holds no second model, lays a micro-batch's pairs out as "
        "prefix trees (each prompt computed once for both of its responses, the chat template's shared "
        "system prompt once per row, no padding), and projects to the vocabulary only at the scored "
        "response positions; TRL recomputes activations (gradient checkpointing on by default), "
        "runs the reference forward every step and computes logits at every position.",
        "",
        "Memory floor: full fine-tuning in fp32 with AdamW holds weights + gradients + two moments = 4 × the "
        "model (≈ 2.1 GB for 135M parameters) whatever the trainer, plus the Python/torch runtime; TRL adds "
        "one more model copy (the reference) but recomputes activations instead of keeping them.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 steps per side")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    steps = a.steps or (3 if a.quick else 10)
    if a.side:  # child process: one side, result as JSON
        import torch

        torch.set_num_threads(a.threads)
        Path(a.result).write_text(json.dumps(SIDES[a.side](Path(a.work), steps)))
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-prefer-") as tmp:
        work = Path(tmp)
        ref = run_side("reference", work, steps, a.threads)
        ra = run_side("rayalign", work, steps, a.threads)
        pad = run_side("rayalign-padded", work, steps, a.threads)
        plain = run_side("rayalign-plain", work, steps, a.threads)
        ck = None if a.quick else run_side("rayalign-ckpt", work, steps, a.threads)
        trl = run_side("trl", work, steps, a.threads)
    text = report(ref, ra, pad, plain, ck, trl, steps, (load_before[0], os.getloadavg()[0]), a.threads)
    print(text)
    out = ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-prefer-cpu{'-quick' if a.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
