"""The GPU paths in one command, in-process, without Ray or vLLM: what a lent GPU machine runs first.

    python benchmarks/gpu_check.py                # one H100/H200: a ~1B Llama in bf16, <= 8 min
    python benchmarks/gpu_check.py --dry-run      # the same code on CPU with a tiny model (~1 min; CI)
    python benchmarks/gpu_check.py --pack         # here, before: write the carry folder (below)

Sections, each on the same randomly initialised Llama-architecture model (hidden 2048, 16 layers,
32 heads / 8 KV heads, intermediate 8192, SmolLM2's 49,152-token vocabulary: 1.07B parameters,
tied embeddings), built from a config on the GPU — nothing is downloaded:

1. SFT on packed chats (`rayalign sft` in-process, bf16 autocast, fp32 master weights): tokens/s
   and MFU (6 · parameters · tokens/s over the GPU's bf16 dense peak; attention FLOPs not counted).
2. The reference pass (`rayalign reference`): reference log-probs of every bundled pair, pairs/s.
3. APO-zero on packed pairs (`rayalign prefer` on the reference output) with the prefix tree
   (`objective.share_prefix: true`: each prompt once for both answers, an explicit ancestor mask)
   and without it (plain packing): tokens/s and pairs/s of each.
4. HF-engine generation (`backend: hf`, bf16, greedy, static batches): generated tokens/s.
5. One GRPO step (`rayalign grpo` in-process, the HF engine as rollout engine): rollout, loss and
   the weight sync to the engine, timed (every call of `RolloutEngines.sync` is timed).

Every training section runs at least 20 optimizer steps and asserts its losses are finite and
fall (mean of the last 5 below the mean of the first 5); GRPO asserts a finite loss and that the
engine got the weights twice (start, after the step). A failed section is reported and the
command exits 1 after writing `benchmarks/results/<date>-gpu-check-<gpu>.md` (the GPU's name;
`cpu-dry-run` for --dry-run), whose header names the command, commit, load average and versions.

What the GPU machine needs: Python 3.12 with torch, transformers, peft and pyarrow (older versions
than the project pins work: nothing here uses newer APIs), and this working tree. rayalign's own
modules used here import neither Ray nor vLLM (tests/cluster/test_gpu_check.py checks it). The
rest travels in `benchmarks/.gpu_check/` (git-ignored; about 6 MiB, far under the 64 MiB a working
tree may carry), written on a machine with network by `--pack`:

- `tokenizer/`: SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json with its chat
  template, special tokens), copied from the project's cache (`rayalign.models.loader`), since the
  GGUF they come from is too big to carry;
- `wheels/`: the pure-Python (and one small binary) wheels rayalign imports that the machine lacks,
  for CPython 3.12 on manylinux x86_64, fetched with the ordinary client:
  `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
  -d benchmarks/.gpu_check/wheels pydantic==X pydantic-core==Y annotated-types==Z typing-inspection==W
  typing-extensions==V` (torch brings a typing-extensions, maybe older than pydantic needs)
  with the versions of the project's environment (`--pack` runs exactly this).

On the GPU machine the script installs those wheels into `benchmarks/.gpu_check/site` with
`pip install --no-index --no-deps --target` the first time (no network) and puts that folder and
`src/` on its path. Carry the folder with the working tree (it is ignored by git:
name it explicitly, e.g. the device runner's `carry: [benchmarks/.gpu_check]`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import report  # benchmarks/report.py: the results header (its load average starts at this import)

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / "benchmarks" / ".gpu_check"
DATA = ROOT / "rayjobs" / "data"
RESULTS = ROOT / "benchmarks" / "results"
WHEELS = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

# model and run sizes: the real check, and the CPU dry run (same code, tiny numbers)
FULL = dict(
    model=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    seq_len=2048, sft_batch=8, pair_batch=8, steps=30, lr_sft=3e-4, lr_apo=2e-5,
    gen_batch=32, gen_tokens=128, gen_prompts=64, grpo_prompts=8, grpo_tokens=64,
)  # fmt: skip
DRY = dict(
    model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2),
    seq_len=256, sft_batch=1, pair_batch=2, steps=20, lr_sft=3e-3, lr_apo=3e-3,
    gen_batch=8, gen_tokens=16, gen_prompts=8, grpo_prompts=2, grpo_tokens=8,
)  # fmt: skip


def pins() -> dict[str, str]:
    text = (ROOT / "docker" / "constraints.txt").read_text()
    return {a.lower(): b for a, b in (ln.split("==") for ln in text.split() if "==" in ln)}


def pack() -> None:
    """Write the carry folder: the tokenizer files and the wheels (needs the project's venv and network)."""
    sys.path.insert(0, str(ROOT / "src"))
    from rayalign.models.loader import smollm2_tokenizer_dir

    tok = CARRY / "tokenizer"
    shutil.rmtree(tok, ignore_errors=True)
    tok.mkdir(parents=True)
    source = smollm2_tokenizer_dir()
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, tok / name)
    from importlib.metadata import PackageNotFoundError, version

    def pinned(name: str) -> str:  # the version this environment runs (pydantic pins its core exactly)
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return f"{name}=={pins()[name]}" if name in pins() else name

    wanted = [pinned(w) for w in WHEELS]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--platform", "manylinux2014_x86_64", "-d", str(CARRY / "wheels"), *wanted],
        check=True,
    )  # fmt: skip
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"wrote {CARRY} ({size / 2**20:.1f} MiB): carry it with the working tree")


def bootstrap() -> None:
    """Put src/ (and, where pydantic is missing, the carried wheels) on the path."""
    sys.path.insert(0, str(ROOT / "src"))
    try:
        import pydantic  # noqa: F401
    except ImportError:
        site, wheels = CARRY / "site", sorted((CARRY / "wheels").glob("*.whl"))
        if not wheels:
            raise SystemExit(f"pydantic is missing and {CARRY / 'wheels'} holds no wheels: run --pack first") from None
        if not site.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site),
                 *map(str, wheels)],
                check=True,
            )  # fmt: skip
        sys.path.insert(0, str(site))


def tokenizer_dir() -> Path:
    carried = CARRY / "tokenizer"
    if (carried / "tokenizer.json").exists():
        return carried
    from rayalign.models.loader import smollm2_tokenizer_dir

    return smollm2_tokenizer_dir()  # a machine with the project's environment


def build_model(out: Path, sizes: dict, device: str) -> int:
    """A randomly initialised Llama with SmolLM2's tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    config = LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=500000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **sizes["model"],
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    n = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n


def read_metrics(output_dir: Path) -> list[dict]:
    from rayalign.train.metrics import read_metrics as read

    return read(output_dir)


def check_losses(records: list[dict], what: str, steps: int = 20) -> dict:
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= steps, f"{what}: {len(losses)} logged steps, want >= {steps}"
    assert all(math.isfinite(x) for x in losses), f"{what}: non-finite loss in {losses}"
    first, last = statistics.fmean(losses[:5]), statistics.fmean(losses[-5:])
    assert last < first, f"{what}: loss did not fall ({first:.4f} -> {last:.4f})"
    return {"loss_first5": first, "loss_last5": last}


def steady(records: list[dict], key: str) -> float | None:
    """Median of `key` over logged steps 3.. (step 1-2 pay compilation and allocator warm-up)."""
    vals = [r[key] for r in records[2:] if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def train_common(sizes: dict, out: Path, lr: float) -> dict:
    return {
        "output_dir": str(out), "max_steps": sizes["steps"], "grad_accum": 1, "seed": 0, "progress": False,
        "optim": {"lr": lr, "warmup_steps": 2, "min_lr_ratio": 1.0, "max_grad_norm": 1.0},
        "checkpoint": {"every": 0}, "scaling": {"workers": 0}, "log_every": 1,
    }  # fmt: skip


def sft(model: str, work: Path, sizes: dict) -> dict:
    from rayalign.stages import run_stage

    data = {"inputs": [str(DATA / "chat.jsonl")], "max_length": sizes["seq_len"], "seq_len": sizes["seq_len"],
            "pool": {"workers": 0}}  # fmt: skip
    cfg = {**train_common(sizes, work / "sft", sizes["lr_sft"]), "model": model, "data": data,
           "objective": {"name": "sft"}, "micro_batch_size": sizes["sft_batch"], "epochs": 1000}  # fmt: skip
    t0 = time.perf_counter()
    run_stage("sft", data=cfg)
    records = read_metrics(work / "sft")
    out = check_losses(records, "sft")
    out.update(tokens_per_s=steady(records, "tokens_per_s"), mfu=steady(records, "mfu"),
               seconds=time.perf_counter() - t0)  # fmt: skip
    return out


def reference(model: str, work: Path, sizes: dict) -> dict:
    from rayalign.stages import run_stage

    cfg = {"inputs": [str(DATA / "pairs.jsonl")], "output": str(work / "reference"), "model": model,
           "dtype": "bf16" if sizes is FULL else "fp32", "max_length": 1024, "batch_size": 16,
           "pool": {"workers": 0}}  # fmt: skip
    t0 = time.perf_counter()
    result = run_stage("reference", data=cfg)
    seconds = time.perf_counter() - t0
    ok = result.counts.ok
    assert ok > 0, "reference: no pair scored"
    return {"pairs": ok, "pairs_per_s": ok / seconds, "seconds": seconds}


def apo(model: str, work: Path, sizes: dict, share_prefix: bool) -> dict:
    from rayalign.stages import run_stage

    name = "apo-prefix-tree" if share_prefix else "apo-plain"
    cfg = {**train_common(sizes, work / name, sizes["lr_apo"]), "model": model,
           "data": {"path": str(work / "reference"), "max_length": 1024, "seq_len": sizes["seq_len"]},
           "objective": {"name": "apo_zero", "beta": 0.1, "share_prefix": share_prefix},
           "micro_batch_size": sizes["pair_batch"], "epochs": 1000, "eval_pairs": 0,
           "reference": {"pool": {"workers": 0}}}  # fmt: skip
    t0 = time.perf_counter()
    run_stage("prefer", data=cfg)
    records = read_metrics(work / name)
    out = check_losses(records, name)
    out.update(tokens_per_s=steady(records, "tokens_per_s"), seconds=time.perf_counter() - t0)
    return out


def generate(model: str, sizes: dict, dtype: str) -> dict:
    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine

    texts = []  # the bundled prompts, less its deliberately bad rows
    for line in (DATA / "prompts.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"].strip():
            texts.append(row["prompt"])
    texts = texts[: sizes["gen_prompts"]]
    engine = make_engine(EngineConfig(backend="hf", model=model, dtype=dtype, batch_size=sizes["gen_batch"]))
    params = SamplingParams(temperature=0.0, max_tokens=sizes["gen_tokens"])
    requests = [GenRequest(messages=[{"role": "user", "content": t}], params=params) for t in texts]
    engine.generate(requests[: sizes["gen_batch"]])  # warm-up batch
    t0 = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - t0
    engine.close()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    tokens = sum(sum(r.completion_tokens) for r in results)
    assert tokens > 0, "generation: no tokens"
    return {"requests": len(results), "tokens": tokens, "tokens_per_s": tokens / seconds, "seconds": seconds}


def grpo(model: str, work: Path, sizes: dict, dtype: str) -> dict:
    from rayalign.rl import rollout
    from rayalign.stages import run_stage

    syncs: list[float] = []
    original = rollout.RolloutEngines.sync

    def timed_sync(self, *a, **kw):  # the benchmark times each weight sync to the engine
        t = time.perf_counter()
        original(self, *a, **kw)
        syncs.append(time.perf_counter() - t)

    cfg = {**train_common(sizes, work / "grpo", 1e-5), "model": model, "prompts": [str(DATA / "prompts.jsonl")],
           "group_size": 4, "prompts_per_step": sizes["grpo_prompts"], "micro_batch_size": sizes["grpo_prompts"],
           "max_steps": 1, "rollout": {"temperature": 1.0, "top_p": 1.0, "max_tokens": sizes["grpo_tokens"]},
           "engine": {"backend": "hf", "dtype": dtype, "batch_size": 4 * sizes["grpo_prompts"]},
           "rewards": [{"name": "length", "params": {"target": 32, "unit": "words"}}]}  # fmt: skip
    rollout.RolloutEngines.sync = timed_sync  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        run_stage("grpo", data=cfg)
        records = read_metrics(work / "grpo")
        seconds = time.perf_counter() - t0
    finally:
        rollout.RolloutEngines.sync = original  # type: ignore[method-assign]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses), f"grpo: losses {losses}"
    assert len(syncs) >= 2, f"grpo: {len(syncs)} weight syncs (want the initial one and one after the step)"
    last = records[-1]
    return {"loss": losses[-1], "rollout_tokens_per_s": last.get("rollout_tokens_per_s"), "weight_sync_seconds": syncs[-1],
            "syncs": len(syncs), "seconds": seconds}  # fmt: skip


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(rows: dict, failures: dict, gpu: str, n_params: int, dry: bool, out_dir: Path) -> Path:
    """The results file, under the standard header (benchmarks/report.py: command, commit, load
    average, versions), so the results index and its checks read it like every other report."""
    lines = [
        f"# GPU check: {'dry run on CPU (tiny model)' if dry else gpu}",
        "",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, Python {platform.python_version()}",
        f"- model: random Llama, {n_params / 1e9:.3f}B parameters, built here from a config",
        "",
        "| section | result |",
        "|---|---|",
    ]
    for name, values in rows.items():
        lines.append(f"| {name} | {', '.join(f'{k} {fmt(v)}' for k, v in values.items())} |")
    for name, err in failures.items():
        lines.append(f"| {name} | FAILED: {err} |")
    device = "cpu-dry-run" if dry else report.slug(gpu.replace("NVIDIA", ""))
    return report.save_report(lines, "gpu-check", device=device, folder=out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model: the CI check that this script runs")
    p.add_argument("--pack", action="store_true", help="write benchmarks/.gpu_check (tokenizer, wheels) and exit")
    p.add_argument("--results", default=str(RESULTS), help="folder for the results file")
    args = p.parse_args(argv)
    if args.pack:
        pack()
        return 0
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the CPU path even on a GPU box
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
    bootstrap()
    import torch

    banned = {"ray", "vllm"} & set(sys.modules)
    assert not banned, f"imported {banned}"
    sizes = DRY if args.dry_run else FULL
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
    device = "cpu" if args.dry_run else "cuda"
    gpu = "cpu" if args.dry_run else torch.cuda.get_device_name(0)
    dtype = "fp32" if args.dry_run else "bfloat16"
    rows: dict[str, dict] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("RAYALIGN_CACHE", str(work / "cache"))
        model = str(work / "model")
        n_params = build_model(Path(model), sizes, device)
        sections = [
            ("sft (packed chats)", lambda: sft(model, work, sizes)),
            ("reference pass", lambda: reference(model, work, sizes)),
            ("apo_zero, prefix tree", lambda: apo(model, work, sizes, share_prefix=True)),
            ("apo_zero, plain packing", lambda: apo(model, work, sizes, share_prefix=False)),
            ("hf generation", lambda: generate(model, sizes, dtype)),
            ("grpo step + weight sync", lambda: grpo(model, work, sizes, dtype)),
        ]
        for name, run in sections:
            print(f"== {name}", flush=True)
            try:
                rows[name] = run()
            except Exception as e:  # the report names every section that failed, then the exit code says so
                traceback.print_exc()
                failures[name] = f"{type(e).__name__}: {e}"[:300]
            if device == "cuda":
                rows.get(name, {})["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.empty_cache()
        banned = {"ray", "vllm"} & set(sys.modules)
        assert not banned, f"imported {banned}"
    write_report(rows, failures, gpu, n_params, args.dry_run, Path(args.results))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
