"""Tokenise + pack throughput of `rayalign prepare` vs Hugging Face `datasets.map`, in one run.

    python benchmarks/bench_data.py [--repeat 20] [--quick]

Both sides tokenise the same chats with the same tokenizer (SmolLM2's, via tiny-random:llama) and
chat template. The baseline is what a user would write: `datasets.map` calling
`apply_chat_template(tokenize=True)` (num_proc 1 and 2; no loss mask, no packing). rayalign does
more work per row (assistant-only labels, validation, first-fit-decreasing packing, parquet shards);
it runs in-process (1 CPU) and on a local Ray cluster with 1 and 2 actors. Prints a table and writes
benchmarks/results/<date>-data-cpu.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random:llama"


def make_input(tmp: Path, repeat: int) -> tuple[Path, list[dict]]:
    rows = []
    for line in (ROOT / "rayjobs/data/chat.jsonl").read_bytes().splitlines():
        try:
            r = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(r, dict) and isinstance(r.get("messages"), list) and r.get("id", "").startswith("chat-"):
            rows.append(r)
    out = [dict(r, id=f"{r['id']}-{k}") for k in range(repeat) for r in rows]
    path = tmp / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in out) + "\n")
    return path, out


def bench_rayalign(path: Path, tmp: Path, workers: int, num_cpus: float) -> tuple[float, Any]:
    from rayalign.data.prepare import PrepareConfig, run_prepare

    out = tmp / f"ra-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrepareConfig(
        kind="chat",
        inputs=[str(path)],
        output=str(out),
        model=MODEL,
        max_length=512,
        seq_len=1024,
        pool={"workers": workers, "num_cpus": num_cpus, "shard_rows": 500},
    )
    t0 = time.perf_counter()
    m = run_prepare(cfg, log=lambda s: None)
    return time.perf_counter() - t0, m


def bench_datasets(rows: list[dict], num_proc: int) -> tuple[float, int]:
    import datasets

    from rayalign.models.loader import load_tokenizer

    datasets.disable_progress_bars()
    tok = load_tokenizer(MODEL)
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])
    t0 = time.perf_counter()
    out = ds.map(
        lambda ex: {"input_ids": tok.apply_chat_template(ex["messages"], tokenize=True, return_dict=False)},
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["messages"],
        load_from_cache_file=False,
    )
    n = sum(len(x) for x in out["input_ids"])
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20, help="copies of the bundled 220 chats")
    ap.add_argument("--quick", action="store_true", help="5 copies, skip the Ray runs")
    args = ap.parse_args()
    repeat = 5 if args.quick else args.repeat
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    path, rows = make_input(tmp, repeat)
    from rayalign.models.loader import load_tokenizer

    load_tokenizer(MODEL)  # build the cache outside the timings

    results = []
    t, m = bench_rayalign(path, tmp, 0, 1)
    tokens = int(m.metrics["tokens"])
    results.append(("rayalign prepare, in-process (1 CPU)", t, tokens, m.metrics["packing_efficiency"]))
    if not args.quick:
        from rayalign.raycluster import ensure_ray

        ensure_ray(num_cpus=2)
        bench_rayalign(path, tmp, 1, 1)  # warm the actor start-up path once
        for workers in (1, 2):
            t, m = bench_rayalign(path, tmp, workers, 1)
            results.append(
                (
                    f"rayalign prepare, Ray pool {workers} actor(s) x 1 CPU",
                    t,
                    int(m.metrics["tokens"]),
                    m.metrics["packing_efficiency"],
                )
            )
    for num_proc in (1, 2):
        t, n = bench_datasets(rows, num_proc)
        results.append((f"datasets.map apply_chat_template, num_proc={num_proc} (no mask, no packing)", t, n, None))

    base = next(r for r in results if r[0].startswith("datasets.map") and "num_proc=1" in r[0])
    base_tps = base[2] / base[1]
    lines = [
        f"# bench_data — {dt.date.today()} — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "",
        f"{len(rows)} chats ({repeat} copies of the bundled set), tokenizer SmolLM2 (49,152 vocab).",
        "",
        "| path | seconds | tokens | tokens/s | vs datasets.map (1 proc) | packing efficiency |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t, n, eff in results:
        tps = n / t
        lines.append(
            f"| {name} | {t:.2f} | {n} | {tps:,.0f} | {tps / base_tps:.2f}x | {'' if eff is None else f'{eff:.3f}'} |"
        )
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    lines += ["", f"Load average at the end: {load} (timings depend on other work running on the box)."]
    save_report(lines, "data", quick=args.quick)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
