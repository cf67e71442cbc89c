"""`rayalign prefer` vs TRL's `DPOTrainer` doing the same work: pairs/s, CPU s/pair, peak memory.

    python benchmarks/bench_prefer.py            # 20 timed steps per side after 1 warm-up step, both data shapes
    python benchmarks/bench_prefer.py --quick    # 5 timed steps per side
    python benchmarks/bench_prefer.py --dtype bf16   # bf16 on every side (TRL bf16=True, rayalign dtype: bf16)

Same model (default builtin:smollm2-135m-instruct), same precision on every side (`--dtype`: fp32, or
bf16: TRL `bf16=True` and rayalign `dtype: bf16`, mixed precision with fp32 master weights; rayalign's
reference pass then holds bf16 weights, TRL's reference forward runs under the same autocast), same pairs, same batch, same loss (sigmoid
DPO, β = 0.1), same learning rate (TRL's default 1e-6), same number of torch threads, every side in its
own fresh subprocess. The sides:

- `rayalign`, `rayalign-ckpt`: `prefer` on the reference stage's output, activation checkpointing off / on;
- `trl`, `trl-ckpt`: DPOTrainer with the reference model held and run every step, gradient checkpointing
  off / on (on is TRL's default);
- `trl-precompute`: DPOTrainer with `precompute_ref_log_probs=True` (gradient checkpointing off);
- `reference`: rayalign's reference pass over exactly the pairs the training sides train on (timed).

Pairs/s is the steady state: the pairs of steps 2..N over the time from the end of step 1 to the end of
step N. The "total work" columns count the reference log-probs in: rayalign's reference pass (its whole
stage: model load, tokenisation, forward, writing shards) and TRL's precompute (its
`_precompute_ref_logps` call) add their seconds per pair to the training seconds per pair, and the
peak memory of the job is the larger of the reference process's and the training process's (the
reference stage ends before `prefer` starts). Peak memory is the process's peak resident set (VmHWM).

Two data shapes, so that a gain is not only prefix sharing:

- `shared`: the bundled rayjobs/data/pairs.jsonl (short answers behind the chat template's shared
  system prompt: the best case for rayalign's prefix-tree packing), 8 pairs per step (TRL's default);
- `long`: distinct prompts, each with its own system message, and chosen / rejected answers of 256-512
  tokens each (seeded random text), 2 pairs per step.

On a shared machine the sides run one after the other, so each row records the 1-minute load average
while it ran; CPU seconds per pair of each side's own process are less sensitive to that load than
pairs/s. Writes benchmarks/results/<date>-prefer-cpu[-quick].md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from report import save_report, slug  # benchmarks/report.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
PAIRS = ROOT / "rayjobs" / "data" / "pairs.jsonl"
BETA, LR = 0.1, 1e-6  # TRL's defaults
SHAPES = {"shared": 8, "long": 2}  # pairs per step
SIDES = ("reference", "trl", "rayalign", "trl-precompute", "rayalign-ckpt", "trl-ckpt")
GOAL_SPEED, GOAL_MEMORY = 2.5, 1.0


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def steady(values: list[float], batch: int) -> float:
    """Seconds (or CPU seconds) per pair over steps 2..N."""
    if len(values) < 2:
        return float("nan")
    return (values[-1] - values[0]) / (batch * (len(values) - 1))


# ---------------------------------------------------------------- data


def write_shared(path: Path, n: int) -> None:
    """The first n good pairs of the bundled file (its deliberately bad rows left out)."""
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
    path.write_text("\n".join(good[:n]) + "\n")


def write_long(path: Path, n: int, model: str) -> dict:
    """n pairs with distinct prompts and system messages and 256-512-token answers (seeded)."""
    from rayalign.models.loader import load_tokenizer

    tok = load_tokenizer(model)
    words = sorted({w.strip(".,?!:;\"'()") for w in PAIRS.read_text(errors="ignore").split()} - {""})
    rng = random.Random(0)

    def text(tokens: int) -> str:
        out: list[str] = []
        while len(tok.encode(" ".join(out), add_special_tokens=False)) < tokens:
            out += rng.choices(words, k=32)
        ids = tok.encode(" ".join(out), add_special_tokens=False)[:tokens]
        return tok.decode(ids)

    rows, lengths = [], []
    for i in range(n):
        system = f"You are assistant {i}. " + text(rng.randint(8, 24))
        chosen, rejected = text(rng.randint(256, 512)), text(rng.randint(256, 512))
        lengths += [
            len(tok.encode(chosen, add_special_tokens=False)),
            len(tok.encode(rejected, add_special_tokens=False)),
        ]
        prompt = [{"role": "system", "content": system}, {"role": "user", "content": f"Question {i}: " + text(24)}]
        rows.append({"id": f"long-{i:04d}", "messages": prompt, "chosen": chosen, "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"answer_tokens_min": min(lengths), "answer_tokens_max": max(lengths)}


# ---------------------------------------------------------------- sides (each in its own process)


def side_reference(work: Path, model: str, steps: int, batch: int, dtype: str) -> dict:
    from rayalign.prefer.reference import ReferenceConfig, run_reference

    t0, c0 = time.perf_counter(), time.process_time()
    m = run_reference(
        ReferenceConfig(
            inputs=[str(work / "pairs.jsonl")],
            output=str(work / "reference"),
            model=model,
            dtype=dtype,
            batch_size=batch,
            pool={"workers": 0, "shard_rows": 4096},
        ),
        log=lambda s: None,
    )
    pairs = m.counts.out_rows if m.counts else 0
    return {
        "pairs": pairs,
        "s_per_pair": (time.perf_counter() - t0) / pairs,
        "cpu_s_per_pair": (time.process_time() - c0) / pairs,
        "peak_rss_mib": peak_rss_mib(),
    }


def side_rayalign(work: Path, model: str, steps: int, batch: int, checkpointing: bool, dtype: str) -> dict:
    import torch

    from rayalign.prefer.stages import PreferConfig, run_prefer

    out = work / ("rayalign-ckpt" if checkpointing else "rayalign")
    cfg = PreferConfig.model_validate(
        dict(
            activation_checkpointing=checkpointing,
            dtype=dtype,
            model=model,
            output_dir=str(out),
            data={"path": str(work / "reference"), "shuffle": True},
            objective={"name": "dpo", "beta": BETA},
            micro_batch_size=batch,
            grad_accum=1,
            max_steps=steps,
            optim={"lr": LR, "min_lr_ratio": 1.0, "warmup_steps": 0},
            eval_pairs=0,
            progress=False,
            log_every=1,
            torch_threads=torch.get_num_threads(),
        )
    )
    result = run_prefer(cfg, log=lambda s: None)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {
        "steps": int(result.metrics["step"]),
        "s_per_pair": steady([r["time"] for r in records], batch),
        "cpu_s_per_pair": steady([r["cpu_time"] for r in records], batch),
        "peak_rss_mib": peak_rss_mib(),
        "loss": result.metrics["loss"],
    }


def side_trl(work: Path, model: str, steps: int, batch: int, checkpointing: bool, precompute: bool, dtype: str) -> dict:
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
    path = resolve_model_path(model)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    times: list[float] = []
    cpu: list[float] = []
    pre = {"seconds": 0.0, "cpu": 0.0}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.time())
            cpu.append(time.process_time())

    class Timed(DPOTrainer):
        def _precompute_ref_logps(self, *a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return super()._precompute_ref_logps(*a, **kw)
            finally:
                pre["seconds"] += time.perf_counter() - t0
                pre["cpu"] += time.process_time() - c0

    args = DPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=LR,
        beta=BETA,
        loss_type=["sigmoid"],
        gradient_checkpointing=checkpointing,
        precompute_ref_log_probs=precompute,
        use_cpu=True,
        bf16=dtype == "bf16",
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Timed(model=policy, args=args, train_dataset=data, processing_class=tok, callbacks=[StepClock()])
    result = trainer.train()
    return {
        "steps": len(times),
        "s_per_pair": steady(times, batch),
        "cpu_s_per_pair": steady(cpu, batch),
        "peak_rss_mib": peak_rss_mib(),
        "loss": result.training_loss,
        "precompute_s_per_pair": pre["seconds"] / len(rows) if precompute else 0.0,
        "precompute_cpu_s_per_pair": pre["cpu"] / len(rows) if precompute else 0.0,
        "settings": {
            "gradient_checkpointing": args.gradient_checkpointing,
            "precompute_ref_log_probs": args.precompute_ref_log_probs,
            "loss_type": args.loss_type,
            "max_length": args.max_length,
            "bf16": args.bf16,
            "ref_model_held": trainer.ref_model is not None,
        },
    }


def run_side_here(side: str, work: Path, model: str, steps: int, batch: int, dtype: str) -> dict:
    if side == "reference":
        return side_reference(work, model, steps, batch, dtype)
    if side.startswith("rayalign"):
        return side_rayalign(work, model, steps, batch, side.endswith("-ckpt"), dtype)
    return side_trl(work, model, steps, batch, side.endswith("-ckpt"), side.endswith("-precompute"), dtype)


def run_side(side: str, work: Path, model: str, steps: int, batch: int, threads: int, dtype: str) -> dict:
    """One side in a fresh interpreter, so one side's allocations never inflate another's peak."""
    out = work / f"{side}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    argv = [sys.executable, __file__, "--side", side, "--work", str(work), "--model", model]
    argv += ["--steps", str(steps), "--batch", str(batch), "--result", str(out), "--threads", str(threads)]
    argv += ["--dtype", dtype]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"side {side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    r = json.loads(out.read_text())
    r["load"] = (load0, os.getloadavg()[0])
    print(f"  {side}: {json.dumps({k: v for k, v in r.items() if k != 'settings'})}", flush=True)
    return r


# ---------------------------------------------------------------- report


def total(r: dict, ref: dict | None) -> tuple[float, float, float]:
    """Total work per side: (pairs/s, CPU s/pair, peak MiB) with the reference log-probs counted in."""
    if ref is not None:  # rayalign: its reference stage, then training
        return (
            1 / (r["s_per_pair"] + ref["s_per_pair"]),
            r["cpu_s_per_pair"] + ref["cpu_s_per_pair"],
            max(r["peak_rss_mib"], ref["peak_rss_mib"]),
        )
    return (
        1 / (r["s_per_pair"] + r.get("precompute_s_per_pair", 0.0)),
        r["cpu_s_per_pair"] + r.get("precompute_cpu_s_per_pair", 0.0),
        r["peak_rss_mib"],
    )


LABELS = {
    "reference": "rayalign reference pass (whole stage)",
    "rayalign": "rayalign prefer, checkpointing off",
    "rayalign-ckpt": "rayalign prefer, checkpointing on",
    "trl": "TRL DPOTrainer, ref model every step, checkpointing off",
    "trl-ckpt": "TRL DPOTrainer, ref model every step, checkpointing on (TRL default)",
    "trl-precompute": "TRL DPOTrainer, precompute_ref_log_probs=True, checkpointing off",
}
PAIRINGS = (  # (rayalign side, TRL side, what is equal)
    ("rayalign", "trl", "checkpointing off on both"),
    ("rayalign-ckpt", "trl-ckpt", "checkpointing on on both"),
    ("rayalign", "trl-precompute", "reference log-probs precomputed on both, checkpointing off"),
)


def shape_section(shape: str, batch: int, steps: int, info: dict, res: dict[str, dict]) -> list[str]:
    ref = res["reference"]
    lines = [
        f"## Data shape `{shape}`: {info['what']}",
        "",
        f"{batch} pairs per step, {steps} steps per training side (step 1 warm-up, {steps - 1} timed); the "
        f"reference pass scored the same {ref['pairs']} pairs.",
        "",
        "| side | steps | pairs/s (training) | CPU s/pair (training) | peak RSS MiB (training) "
        "| reference s/pair | total work pairs/s | total work CPU s/pair | total work peak MiB | loss | 1-min load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {LABELS['reference']} | | | | | {ref['s_per_pair']:.3f} | | {ref['cpu_s_per_pair']:.3f} "
        f"| {ref['peak_rss_mib']:.0f} | | {ref['load'][0]:.1f} → {ref['load'][1]:.1f} |",
    ]
    for side in SIDES[1:]:
        if side not in res:
            continue
        r = res[side]
        tp, tc, tm = total(r, ref if side.startswith("rayalign") else None)
        pre = ref["s_per_pair"] if side.startswith("rayalign") else r.get("precompute_s_per_pair", 0.0)
        lines.append(
            f"| {LABELS[side]} | {r['steps']} | {1 / r['s_per_pair']:.3f} | {r['cpu_s_per_pair']:.3f} "
            f"| {r['peak_rss_mib']:.0f} | {pre:.3f} | {tp:.3f} | {tc:.3f} | {tm:.0f} | {r['loss']:.4f} "
            f"| {r['load'][0]:.1f} → {r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "| fair pairing | total work pairs/s ratio | total work CPU ratio (TRL / rayalign CPU s) "
        "| peak memory ratio | goal (≥ 2.5× at ≤ 1.0×) |",
        "|---|---:|---:|---:|---|",
    ]
    for ra, trl, what in PAIRINGS:
        if ra not in res or trl not in res:
            continue
        a, b = total(res[ra], ref), total(res[trl], None)
        speed, cpu, mem = a[0] / b[0], b[1] / a[1], a[2] / b[2]
        met = "met" if speed >= GOAL_SPEED and mem <= GOAL_MEMORY else "not met"
        lines.append(f"| `{ra}` vs `{trl}` ({what}) | {speed:.2f}× | {cpu:.2f}× | {mem:.2f}× | {met} |")
    trl_settings = {s: res[s]["settings"] for s in SIDES if s.startswith("trl") and s in res}
    lines += ["", f"TRL settings in effect: `{json.dumps(trl_settings)}`.", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 timed steps per side instead of 20")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side (after 1 warm-up step)")
    p.add_argument("--shapes", default="shared,long", help="comma list of data shapes: shared, long")
    p.add_argument("--sides", default=",".join(SIDES[1:]), help="comma list of training sides to run")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--threads", type=int, default=1, help="torch threads of every side")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="precision of every side")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:  # child process: one side, result as JSON
        import torch

        torch.set_num_threads(a.threads)
        Path(a.result).write_text(json.dumps(run_side_here(a.side, Path(a.work), a.model, a.steps, a.batch, a.dtype)))
        return
    timed = a.steps or (5 if a.quick else 20)
    steps = timed + 1
    shapes = [s for s in a.shapes.split(",") if s]
    sides = [s for s in a.sides.split(",") if s]
    bad = [s for s in shapes if s not in SHAPES] + [s for s in sides if s not in SIDES[1:]]
    if bad:
        p.error(f"unknown shape or side {bad}; shapes: {', '.join(SHAPES)}; sides: {', '.join(SIDES[1:])}")
    import tempfile

    lines = [
        f"# prefer vs TRL DPOTrainer, same work — {os.cpu_count()} CPUs",
        "",
        f"Model `{a.model}` ({a.dtype} on every side), sigmoid DPO β={BETA}, lr {LR}, torch threads per side: {a.threads}; every "
        "side in its own process, one after the other (each row's load average is the 1-minute value at its "
        "start and end). Total work = training + reference log-probs (rayalign: the reference stage's "
        "wall time per pair, model load included; TRL precompute: its precompute pass), peak memory of the "
        "job = the larger of the reference and training processes.",
        "",
    ]
    for shape in shapes:
        batch = SHAPES[shape]
        with tempfile.TemporaryDirectory(prefix=f"bench-prefer-{shape}-") as tmp:
            work = Path(tmp)
            info: dict = {}
            if shape == "shared":
                write_shared(work / "pairs.jsonl", steps * batch)
                info["what"] = "the bundled pairs (short answers, the template's shared system prompt)"
            else:
                n = write_long(work / "pairs.jsonl", steps * batch, a.model)
                info["what"] = (
                    f"distinct prompts and system messages, answers of {n['answer_tokens_min']}–"
                    f"{n['answer_tokens_max']} tokens"
                )
            print(f"shape {shape}: {info['what']}", flush=True)
            res = {"reference": run_side("reference", work, a.model, steps, batch, a.threads, a.dtype)}
            for side in sides:
                res[side] = run_side(side, work, a.model, steps, batch, a.threads, a.dtype)
        lines += shape_section(shape, batch, steps, info, res)
    name = "prefer" + ("" if shapes == list(SHAPES) else "-" + "-".join(shapes))
    name += "" if a.model == MODEL else f"-{slug(a.model)}"
    save_report(lines, name + ("" if a.dtype == "fp32" else f"-{a.dtype}"), quick=a.quick)


if __name__ == "__main__":
    main()
