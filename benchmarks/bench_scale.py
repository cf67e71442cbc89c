"""Memory that must not grow with the corpus or the model: a training rank's data, rank 0's checkpoint save.

    python benchmarks/bench_scale.py --quick      # ~3 min: corpus 1×/10×/50× of 64 chats, a ~60M model
    python benchmarks/bench_scale.py              # corpus of 220 chats ×1/10/50, a ~330M-param Llama

1. Data: the same 4 training steps (one process, tiny model, shuffled) on a 1×, 10× and 50× copy of
   a prepared dataset. Reported: peak RSS of the process, rows/bytes the RowSource decoded, and what
   the previous loader held (the whole table, every shard concatenated).
2. Checkpoint save: 2 gloo processes, FSDP2-sharded random Llama with AdamW state (one step taken).
   Rank 0's peak RSS rise during (a) the sharded DCP save and (b) the previous full-gather path
   (full model + optimizer state gathered to rank 0, one torch.save). Goal: (a) ≤ full state / world
   + a constant. Peak RSS is reset between the two (/proc/self/clear_refs) so each is its own.
Each part runs in its own processes, so one part's peak does not hide the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import save_report  # noqa: E402  (benchmarks/report.py; imported first, it notes the load at the start)


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


# ---------------------------------------------------------------------------------------------- data
def prepare(work: Path, chats: int) -> Path:
    from rayalign.data.prepare import PrepareConfig, run_prepare
    from rayalign.data.shards import PoolConfig

    src = work / "chats.jsonl"
    lines = (REPO / "rayjobs/data/chat.jsonl").read_bytes().splitlines()[:chats]  # bytes: the file
    src.write_bytes(b"\n".join(lines) + b"\n")  # carries a few rows that are not UTF-8 on purpose
    out = work / "x1"
    run_prepare(
        PrepareConfig(
            kind="chat",
            inputs=[str(src)],
            output=str(out),
            model="tiny-random:llama",
            max_length=256,
            seq_len=256,
            pool=PoolConfig(workers=0, shard_rows=8),
        ),
        log=lambda *_: None,
    )
    return out


def copies(src: Path, dst: Path, times: int) -> Path:
    (dst / "data").mkdir(parents=True)
    n = 0
    for _ in range(times):
        for f in sorted((src / "data").glob("shard-*.parquet")):
            shutil.copy(f, dst / "data" / f"shard-{n:05d}.parquet")
            n += 1
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    return dst


def data_child(path: str, out: str) -> None:
    import pyarrow.parquet as pq

    from rayalign.train.config import TrainConfig
    from rayalign.train.launcher import launch

    cfg = TrainConfig(
        model="tiny-random:llama",
        output_dir=out,
        data={"path": path},
        max_steps=4,
        micro_batch_size=1,
        grad_accum=2,
        progress=False,
        checkpoint={"export": False},
    )
    res = launch(cfg)
    peak = _hwm_mb()
    # what every rank held before: the whole prepared dataset, every shard file of the folder
    # (read file by file: the copies' manifest names only the 1× shards, the folder holds them all)
    old_table = sum(pq.read_table(f).nbytes for f in sorted(Path(path, "data").glob("shard-*.parquet")))
    print(json.dumps({"peak_rss_mb": peak, **res.details["data"], "old_loader_table_mb": old_table / 2**20}))


def bench_data(work: Path, chats: int) -> list[dict]:
    base = prepare(work, chats)
    rows = []
    for times in (1, 10, 50):
        folder = copies(base, work / f"c{times}", times)
        proc = subprocess.run(
            [sys.executable, __file__, "--data-child", str(folder), str(work / f"run{times}")],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append({"copies": times, **json.loads(proc.stdout.strip().splitlines()[-1])})
    return rows


# ---------------------------------------------------------------------------------------- checkpoint
def _random_llama(layers: int, hidden: int, vocab: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def ckpt_child(rank: int, world: int, port: int, spec: dict, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from rayalign.train import checkpoint as ckpt
    from rayalign.train.fsdp import shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = shard_model(_random_llama(**spec), torch.device("cpu"), world, mixed_precision=False)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.float().mean().backward()
    opt.step()
    full_state_mb = n_params * 4 * 3 / 2**20  # fp32 weights + exp_avg + exp_avg_sq
    result = {"params": n_params, "full_state_mb": full_state_mb}

    dist.barrier()
    _reset_peak()
    base = _rss_mb()
    state = ckpt.training_state(model, opt, adapter=False)
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=f"{out}/dcp")
    del state
    result["dcp_peak_rise_mb"] = _hwm_mb() - base
    dist.barrier()

    _reset_peak()
    base = _rss_mb()
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, opt, options=opts)
    if rank == 0:
        torch.save({"model": msd, "optim": osd}, f"{out}/full.pt")
    del msd, osd
    result["full_gather_peak_rise_mb"] = _hwm_mb() - base
    dist.barrier()
    if rank == 0:
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


def bench_checkpoint(work: Path, spec: dict) -> dict:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--ckpt-child", str(r), str(port), json.dumps(spec), str(work / "ckpt")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"checkpoint children failed: {[p.returncode for p in procs]}")
    return json.loads(outs[0].strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data-child", nargs=2)
    ap.add_argument("--ckpt-child", nargs=4)
    ap.add_argument("--data-only", action="store_true", help="skip the checkpoint part")
    args = ap.parse_args()
    if args.data_child:
        return data_child(*args.data_child)
    if args.ckpt_child:
        r, port, spec, out = args.ckpt_child
        return ckpt_child(int(r), 2, int(port), json.loads(spec), out)
    chats = 64 if args.quick else 220
    spec = (
        {"layers": 4, "hidden": 512, "vocab": 32000} if args.quick else {"layers": 16, "hidden": 1024, "vocab": 32000}
    )
    load = Path("/proc/loadavg").read_text().strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = bench_data(work, chats)
        ck = None if args.data_only else bench_checkpoint(work, spec)
    lines = [
        f"# bench_scale {'(quick)' if args.quick else ''}",
        "",
        f"load average at start: `{load}` — taken UNDER LOAD (parallel work on this 2-CPU box)",
        "",
        "## Data memory of a training rank vs corpus size (4 steps, 2 rows each, shuffled)",
        "",
        "| copies | dataset rows | rows decoded | MB decoded | old loader table MB | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for d in data:
        lines.append(
            f"| {d['copies']}× | {d['dataset_rows']} | {d['rows_read']} | {d['bytes_read'] / 2**20:.2f} "
            f"| {d['old_loader_table_mb']:.2f} | {d['peak_rss_mb']:.0f} |"
        )
    if ck is not None:
        lines += [
            "",
            f"## Rank 0 peak RSS rise during a checkpoint save (2 gloo ranks, {ck['params'] / 1e6:.0f}M params)",
            "",
            f"- full training state (fp32 weights + AdamW moments): {ck['full_state_mb']:.0f} MB; "
            f"1/world of it: {ck['full_state_mb'] / 2:.0f} MB",
            f"- sharded DCP save (this engine): {ck['dcp_peak_rise_mb']:.0f} MB",
            f"- full gather to rank 0 + torch.save (previous engine): {ck['full_gather_peak_rise_mb']:.0f} MB",
            "",
        ]
    save_report(lines, "scale-data" if args.data_only else "scale", quick=args.quick)


if __name__ == "__main__":
    main()
