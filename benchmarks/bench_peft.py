"""Aligner vs LoRA (r=8, through peft) vs full fine-tuning on SmolLM2-135M, in one run.

    python benchmarks/bench_peft.py            # batch 4 x 256 tokens, 2 warm-up + 6 timed steps
    python benchmarks/bench_peft.py --quick    # batch 2 x 128 tokens, 1 warm-up + 3 timed steps

For each method: trainable parameters, median optimizer-step time (forward + backward + AdamW)
and peak memory. Each method runs in its own fresh subprocess so one method's allocations never
inflate another's peak. Peak memory on CUDA is `torch.cuda.max_memory_allocated`; on CPU it is the
process's peak resident set (VmHWM, reset after loading the model through /proc/self/clear_refs),
reported as the growth above the loaded model — activations, gradients and optimizer state.

Full fine-tuning is the baseline of the ratio columns. LoRA targets q/k/v/o (the project's default
`peft: {method: lora}`); Aligner uses 1 token from layer 2 on (the default `peft: {method: aligner}`).
Prints a markdown table and writes benchmarks/results/<date>-peft-<device>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
METHODS = ("full", "lora", "aligner")


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def build(method: str, model):
    if method == "aligner":
        from rayalign.models.aligner import add_aligner

        return add_aligner(model, tokens=1, start_layer=2)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        return get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        )
    return model  # full fine-tuning: every parameter trains


def worker(method: str, batch: int, seq: int, warmup: int, steps: int, threads: int) -> dict:
    """One method in this (fresh) process; returns its measurements."""
    import torch

    from rayalign.models.loader import load_model

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(method, load_model(MODEL, dtype=dtype, device=device, attn_implementation="sdpa"))
    model.train()
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (batch, seq), generator=g).to(device)

    if device == "cuda":
        torch.cuda.synchronize()
        base_mem = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        base_mem = _rss_mib("VmRSS")
        peak_ok = _reset_peak_rss()
    times, cpu_times, losses = [], [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        losses.append(loss.detach())
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_mib("VmHWM") if peak_ok else float("nan")
    return {
        "method": method,
        "trainable": trainable,
        "total": sum(p.numel() for p in model.parameters()),
        # min is the figure least disturbed by other processes on a shared box; median shown beside it
        "step_s": min(times),
        "step_median_s": statistics.median(times),
        "step_cpu_s": min(cpu_times),
        "peak_mib": peak,
        "base_mib": base_mem,
        "delta_mib": peak - base_mem,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
    }


def run_method(method: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(results: list[dict], args) -> str:
    base = next(r for r in results if r["method"] == "full")
    dev = results[0]["device"]
    mem_name = "peak allocated" if dev == "cuda" else "peak RSS"
    names = {"full": "full fine-tuning", "lora": "LoRA r=8 (q,k,v,o; peft)", "aligner": "Aligner (1 token, layers 2+)"}
    lines = [
        f"# bench_peft — {dt.date.today()} — {results[0]['device_name']}, {dev}, {os.cpu_count()} CPUs, "
        f"torch threads {args.threads}",
        "",
        f"SmolLM2-135M-Instruct ({base['total']:,} params), batch {args.batch} x {args.seq} tokens, AdamW, "
        f"{'bf16' if dev == 'cuda' else 'fp32'}, {args.steps} timed steps after {args.warmup} warm-up: fastest "
        f"step (least disturbed by other load on the machine), median beside it; on CPU the ratio column "
        f"compares CPU seconds per step (the work itself, robust to other load on a shared box).",
        f"Memory: {mem_name}; 'training memory' = peak minus the memory held right after loading "
        f"the model (activations + gradients + optimizer state).",
        "",
        f"| method | trainable params | % of model | step (s) | median (s) | CPU s/step | step vs full | {mem_name} (MiB) | "
        f"training memory (MiB) | vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # On a shared CPU box wall time mostly measures the neighbours; with one torch thread the process's
    # CPU seconds per step measure the work itself, so the ratio uses them there.
    key = "step_s" if dev == "cuda" else "step_cpu_s"
    for r in results:
        lines.append(
            f"| {names[r['method']]} | {r['trainable']:,} | {100 * r['trainable'] / base['total']:.4f}% | "
            f"{r['step_s']:.3f} | {r['step_median_s']:.3f} | {r['step_cpu_s']:.3f} | {r[key] / base[key]:.2f}x | {r['peak_mib']:,.0f} | "
            f"{r['delta_mib']:,.0f} | {r['delta_mib'] / base['delta_mib']:.2f}x |"
        )
    lines += [
        "",
        "Why Aligner's step costs about what LoRA's does: both must back-propagate through the whole frozen "
        "network (the prefix feeds every layer from `start_layer` on); what they save over full fine-tuning "
        "is the weight gradients and AdamW state of the frozen parameters — hence the memory column.",
        "",
        "Loss over the timed run (random tokens, just a sanity check that each method trains): "
        + ", ".join(f"{r['method']} {r['loss_first']:.3f}→{r['loss_last']:.3f}" for r in results),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 2 x 128, 1 warm-up + 3 timed steps")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: stable on a shared box)")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.quick:
        args.batch, args.seq, args.warmup, args.steps = 2, 128, 1, 3
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq, args.warmup, args.steps, args.threads)))
        return

    from rayalign.models.loader import resolve_model_path

    resolve_model_path(MODEL)  # materialise the HF folder once, outside every measurement
    results = [run_method(m, args) for m in METHODS]
    text = report(results, args)
    dev = "gpu" if results[0]["device"] == "cuda" else "cpu"
    save_report(text.rstrip("\n").split("\n"), "peft", quick=args.quick, device=dev, folder=Path(args.out))


if __name__ == "__main__":
    main()
