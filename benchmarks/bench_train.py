"""SFT throughput and peak memory: rayalign's train loop vs TRL's SFTTrainer, same model/data/machine.

    python benchmarks/bench_train.py --quick        # ~3 min on 2 idle CPUs: 32 chats
    python benchmarks/bench_train.py                # all bundled chats (220), one epoch each
    python benchmarks/bench_train.py --dtype bf16   # bf16 mixed precision on both sides (TRL bf16=True)

Both train SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`) for one epoch over the same chats,
same optimiser (AdamW, lr 2e-5, clip 1.0), the same precision (`--dtype`; default fp32 on CPU / bf16 on
GPU; bf16 = mixed precision with fp32 master weights on both sides), SDPA attention, and the same
number of torch threads, no activation checkpointing. Each runs in its own subprocess so peak memory (max RSS on CPU,
torch.cuda.max_memory_allocated on GPU) is its own. Throughput counts REAL tokens (no padding) from
the end of step 1 to the end of the last step, so model loading and first-step warm-up are excluded.

rayalign packs documents into rows of 512 tokens (position-id resets, no padding). TRL runs twice:
its default (padded batches of `--trl-batch` chats, prompt–completion loss) and with packing
(`packing=True`, `packing_strategy="bfd"`, which turns on its padding-free mode: rows of 512 tokens
flattened with position ids, one row per step like rayalign). Every trainer sees the same chats and the
same real tokens; the report gives tokens/s, tokens per CPU second and peak memory of each, and the
ratios of rayalign to each TRL variant. Writes benchmarks/results/<date>-train-<cpu|gpu>[-quick].md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import save_report, slug  # benchmarks/report.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_rayalign(work: Path, args) -> dict:
    from rayalign.train.config import TrainConfig
    from rayalign.train.launcher import launch
    from rayalign.train.metrics import read_metrics

    out = work / "rayalign_run"
    cfg = TrainConfig(
        model=args.model,
        output_dir=str(out),
        data={"path": str(work / "packed"), "shuffle": False},
        objective={"name": "sft"},
        micro_batch_size=1,
        grad_accum=1,
        epochs=1,
        optim={"lr": 2e-5, "max_grad_norm": 1.0},
        checkpoint={"every": 0},
        progress=False,
        torch_threads=args.threads,
        dtype=args.dtype,
        stop_at_step=None,
    )
    # no final checkpoint cost inside the timed window: timing comes from per-step metric timestamps
    launch(cfg)
    recs = read_metrics(out)
    tokens = sum(r["tokens"] for r in recs[1:])
    seconds = recs[-1]["time"] - recs[0]["time"]
    return {
        "steps": len(recs),
        "tokens": tokens,
        "seconds": seconds,
        "peak_mb": peak_memory_mb(),
        "cpu_seconds": recs[-1]["cpu_time"] - recs[0]["cpu_time"],
    }


def run_trl(work: Path, args, packing: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rayalign.models.loader import load_tokenizer, resolve_model_path

    torch.set_num_threads(args.threads)
    chats = [json.loads(x) for x in (work / "chats.jsonl").read_text().splitlines()]
    # prompt = everything before the last assistant turn, completion = that turn (loss on it only)
    ds = Dataset.from_list([{"prompt": c["messages"][:-1], "completion": c["messages"][-1:]} for c in chats])
    gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(args.model), dtype=torch.float32, attn_implementation="sdpa"
    )
    tok = load_tokenizer(args.model)
    counted: list[int] = []
    stamps: list[float] = []
    cpu: list[float] = []

    base_collator = None

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            stamps.append(time.time())
            cpu.append(time.process_time())

    conf = SFTConfig(
        output_dir=str(work / ("trl_packed_run" if packing else "trl_run")),
        per_device_train_batch_size=1 if packing else args.trl_batch,
        gradient_accumulation_steps=1,
        learning_rate=2e-5,
        max_grad_norm=1.0,
        num_train_epochs=1,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        max_length=512,
        packing=packing,
        packing_strategy="bfd",
        gradient_checkpointing=False,  # TRL turns it on by default; rayalign runs without
        bf16=gpu if args.dtype == "auto" else args.dtype == "bf16",
        use_cpu=not gpu,
        dataloader_num_workers=0,
        seed=0,
        shuffle_dataset=False,
    )
    trainer = SFTTrainer(model=model, args=conf, train_dataset=ds, processing_class=tok, callbacks=[Stamp()])
    base_collator = trainer.data_collator

    def counting_collator(examples):
        batch = base_collator(examples)
        counted.append(
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        )
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    n = len(stamps)
    settings = {
        "packing": conf.packing,
        "padding_free": bool(getattr(trainer, "padding_free", conf.padding_free)),
        "per_device_train_batch_size": conf.per_device_train_batch_size,
        "max_length": conf.max_length,
        "gradient_checkpointing": conf.gradient_checkpointing,
        "bf16": conf.bf16,
    }
    tokens = sum(counted[1:n])  # batches of steps 2..n (the dataloader may prefetch one more)
    return {
        "steps": n,
        "tokens": tokens,
        "seconds": stamps[-1] - stamps[0],
        "peak_mb": peak_memory_mb(),
        "cpu_seconds": cpu[-1] - cpu[0],
        "settings": settings,
    }


WORKERS = {
    "rayalign": run_rayalign,
    "trl": run_trl,
    "trl-packed": lambda work, args: run_trl(work, args, packing=True),
}


def prepare(work: Path, n: int, model: str) -> None:
    """Tokenise once to find the valid chats, keep the first n, pack those for rayalign."""
    from rayalign.data.prepare import PrepareConfig, run_prepare
    from rayalign.data.shards import read_dataset

    def prepare_chat(src: Path, out: Path) -> None:
        cfg = PrepareConfig(
            kind="chat",
            inputs=[str(src)],
            output=str(out),
            model=model,
            max_length=512,
            seq_len=512,
            pool={"workers": 0},
        )
        run_prepare(cfg, log=lambda *_: None)

    prepare_chat(REPO / "rayjobs/data/chat.jsonl", work / "all")
    ok = {d for row in read_dataset(work / "all", ["doc_ids"]).to_pylist() for d in row["doc_ids"]}
    chats = []
    for line in (REPO / "rayjobs/data/chat.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):  # the sample file has deliberately bad rows
            continue
        if isinstance(row, dict) and row.get("id") in ok and row["messages"][-1]["role"] == "assistant":
            chats.append(row)
    chats = chats[:n]
    (work / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    prepare_chat(work / "chats.jsonl", work / "packed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32 chats instead of all")
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trl-batch", type=int, default=8, help="chats per step of TRL's padded (unpacked) run")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="both sides' precision")
    p.add_argument("--trainers", default="rayalign,trl,trl-packed", help="comma list of trainers to run")
    p.add_argument(
        "--concurrent",
        action="store_true",
        help="run both trainers at the same time, so that on a shared, busy machine both see the "
        "same background load (on a dedicated machine leave it off)",
    )
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](Path(args.work), args)))
        return

    n = args.samples or (32 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        prepare(work, n, args.model)
        n_chats = len((work / "chats.jsonl").read_text().splitlines())
        results = {}
        procs = {}
        loads: dict[str, tuple[float, float]] = {}
        trainers = [t for t in ("trl", "rayalign", "trl-packed") if t in args.trainers.split(",")]
        if "rayalign" not in trainers:
            p.error("--trainers must include rayalign (the ratios are rayalign's)")
        for name in trainers:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--work",
                str(work),
                "--threads",
                str(args.threads),
                "--trl-batch",
                str(args.trl_batch),
                "--model",
                args.model,
                "--dtype",
                args.dtype,
            ]
            load0 = os.getloadavg()[0]
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if not args.concurrent:
                procs[name].wait()
                loads[name] = (load0, os.getloadavg()[0])
        for name, proc in procs.items():
            stdout, stderr = proc.communicate()
            line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{name} run failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
            r = json.loads(line[-1][7:])
            r["tokens_per_s"] = r["tokens"] / max(r["seconds"], 1e-9)
            r["tokens_per_cpu_s"] = r["tokens"] / max(r["cpu_seconds"], 1e-9)
            r["load"] = loads.get(name, (load0, os.getloadavg()[0]))
            results[name] = r
    report(results, n_chats, args)


def report(results: dict, n_chats: int, args) -> None:
    import torch

    a = results["rayalign"]
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    )
    setups = {
        "rayalign": "packed rows of 512, no padding, logits at targets only",
        "trl": f"batch {args.trl_batch}, padded, prompt–completion loss (TRL default)",
        "trl-packed": "packing=True (bfd, padding-free), rows of 512, batch 1, prompt–completion loss",
    }
    lines = [
        f"# SFT throughput: rayalign vs TRL SFTTrainer (with and without packing) — {time.strftime('%Y-%m-%d')}",
        "",
        f"Model `{args.model}`, {n_chats} chats from `rayjobs/data/chat.jsonl`, one epoch, {args.threads} torch "
        f"threads, device: {device}, precision `{args.dtype}` on every side (auto: fp32 on CPU, bf16 on GPU); "
        f"torch {torch.__version__}. Tokens are real (non-padding) tokens, timed from "
        "the end of step 1 to the end of the last step. "
        + (
            "All trainers ran at the same time (`--concurrent`), sharing whatever background load the machine had."
            if args.concurrent
            else "The trainers ran one after the other in one invocation; each row gives the 1-minute load average "
            "at its start and end. CPU seconds (the process's own user+system time) are far less sensitive to "
            "other processes on a shared machine than wall time."
        ),
        "",
        "| trainer | setup | steps | tokens timed | wall s | tokens/s | CPU s | tokens/CPU-s | peak memory (MiB) "
        "| 1-min load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in [n for n in ("rayalign", "trl", "trl-packed") if n in results]:
        r = results[name]
        lines.append(
            f"| {name} | {setups[name]} | {r['steps']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} "
            f"| {r['cpu_seconds']:.1f} | {r['tokens_per_cpu_s']:.1f} | {r['peak_mb']:.0f} "
            f"| {r['load'][0]:.1f} → {r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "| rayalign vs | speed (tokens/s) | speed (tokens per CPU-s) | peak memory | goal ≥ 1.5× (vs TRL with packing) |",
        "|---|---:|---:|---:|---|",
    ]
    for name in [n for n in ("trl", "trl-packed") if n in results]:
        b = results[name]
        speed = a["tokens_per_s"] / b["tokens_per_s"]
        cpu = a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]
        goal = ("met" if speed >= 1.5 else "not met") if name == "trl-packed" else ""
        lines.append(f"| {name} | {speed:.2f}× | {cpu:.2f}× | {a['peak_mb'] / b['peak_mb']:.2f}× | {goal} |")
    settings = {n: results[n]["settings"] for n in ("trl", "trl-packed") if n in results}
    lines += ["", f"TRL settings in effect: `{json.dumps(settings)}`."]
    kind = "gpu" if torch.cuda.is_available() else "cpu"
    name = "train" if args.model == MODEL else f"train-{slug(args.model)}"
    name += "" if args.dtype == "auto" else f"-{args.dtype}"
    save_report(lines, name, quick=args.quick, device=kind)


if __name__ == "__main__":
    main()
