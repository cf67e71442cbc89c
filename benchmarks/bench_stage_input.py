"""Bytes read by the `prepare` stage vs the input size: linear stage input at two shard sizes.

    python benchmarks/bench_stage_input.py            # a 1 GB JSONL
    python benchmarks/bench_stage_input.py --quick    # ~50 MB

Every file the readers open is wrapped in a counter of the bytes its reads return (the planner's
head sample, the workers' byte ranges and their line tails), with the pool in-process so one
counter sees every read. The goal is ≤ 1.1× the input size at 256 and at 4,096 rows per shard. The
"whole file per shard" column is what the previous reader (one full read of the file for every
shard) would have read: shards × file size, computed, not measured. Writes
benchmarks/results/<date>-stage-input-cpu[-quick].md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

MODEL = "tiny-random:llama"


def make_input(path: Path, target_bytes: int) -> int:
    """Prompts of ~1 KB each, varied lengths, until the file reaches `target_bytes`."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    with open(path, "w") as fh:
        i = 0
        while fh.tell() < target_bytes:
            text = " ".join(words[(i + k) % len(words)] for k in range(60 + i % 240))
            fh.write(json.dumps({"id": f"p{i}", "prompt": text}) + "\n")
            i += 1
    return i


def run(path: Path, out: Path, shard_rows: int) -> tuple[int, float, dict]:
    from rayalign.data.prepare import PrepareConfig, run_prepare

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
    from counting import counting_open_input  # the byte counter the tests use

    with counting_open_input() as counter:
        t0 = time.perf_counter()
        result = run_prepare(
            PrepareConfig(
                kind="prompts",
                inputs=[str(path)],
                output=str(out),
                model=MODEL,
                pool={"workers": 0, "shard_rows": shard_rows},
            ),
            log=lambda s: None,
        )
        seconds = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    return counter.total, seconds, {"rows": result.counts.in_, "shards": len(manifest["shards"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="~50 MB instead of 1 GB")
    args = ap.parse_args()
    target = (50 if args.quick else 1024) << 20
    tmp = Path(tempfile.mkdtemp(prefix="bench-stage-input-"))
    path = tmp / "prompts.jsonl"
    n_rows = make_input(path, target)
    size = path.stat().st_size
    lines = [
        f"# bench_stage_input — {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "",
        f"`prepare` (kind prompts, in-process pool) on a {size / 2**20:.0f} MiB JSONL of {n_rows:,} rows.",
        "",
        "| rows per shard | shards | rows in | bytes read | read / input | whole file per shard (computed) | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shard_rows in (256, 4096):
        out = tmp / f"out-{shard_rows}"
        read, seconds, info = run(path, out, shard_rows)
        assert info["rows"] == n_rows, info
        lines.append(
            f"| {shard_rows} | {info['shards']} | {info['rows']:,} | {read:,} | {read / size:.4f}x | "
            f"{info['shards'] * size / size:.0f}x | {seconds:.1f} |"
        )
        shutil.rmtree(out, ignore_errors=True)
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    lines += [
        "",
        f"Load average at the end: {' '.join(load)} (taken while other work ran in parallel on the box; "
        "bytes read do not depend on load, seconds do).",
    ]
    save_report(lines, "stage-input", quick=args.quick)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
