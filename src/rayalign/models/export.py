"""Export a training checkpoint as a Hugging Face folder that plain transformers and vLLM load.

    rayalign export runs/sft/checkpoints/step-000100 --output runs/sft/hf
    rayalign export s3://bucket/run/sft/checkpoints/step-000100 --output s3://bucket/models/sft

Full-parameter checkpoints hold their weights as `torch.distributed.checkpoint` shards. The export
reads them a group of tensors at a time (at most `shard_bytes` in memory) and writes one
safetensors file per group plus `model.safetensors.index.json` — the model is never materialised
in one process. Adapter checkpoints (LoRA, Aligner) already hold the adapter folder: it is copied.
Every exported folder gets a README.md model card; a `.rayalign-export.json` marker is written
last (readers of object storage treat a folder without it as absent).
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from rayalign import storage
from rayalign.models.dcp_reader import storage_reader

MARKER = ".rayalign-export.json"
WEIGHTS_PREFIX = "model."  # DCP flattens {"model": {...}, "optim": {...}} into dotted keys


def _weight_plan(dcp_dir: str, shard_bytes: int, tied: bool) -> list[list[tuple[str, Any]]]:
    """Groups of (key, TensorStorageMetadata) of at most `shard_bytes` each, in key order."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = storage_reader(dcp_dir).read_metadata().state_dict_metadata
    items = [
        (k[len(WEIGHTS_PREFIX) :], m)
        for k, m in sorted(meta.items())
        if k.startswith(WEIGHTS_PREFIX) and isinstance(m, TensorStorageMetadata)
    ]
    if tied:  # tied output embeddings are the input embeddings: transformers re-ties them on load
        items = [(k, m) for k, m in items if k != "lm_head.weight"]
    groups: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for key, m in items:
        nbytes = m.size.numel() * m.properties.dtype.itemsize
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((key, m))
        size += nbytes
    return groups


def export_weights(dcp_dir: str, out: Path, shard_bytes: int, tied: bool) -> int:
    """Stream DCP weight shards (a local folder or a URI, read in place) into safetensors files;
    returns the number of tensors written."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    groups = _weight_plan(dcp_dir, shard_bytes, tied)
    n = len(groups)
    index: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups):
        tensors = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in group}
        with warnings.catch_warnings():  # one process reading a checkpoint is the intended use here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": tensors}, storage_reader=storage_reader(dcp_dir), no_dist=True)
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / name), metadata={"format": "pt"})
        index.update(dict.fromkeys(tensors, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if n > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=2)
        )
    return len(index)


def export_checkpoint(checkpoint: str, output: str, card: dict | None = None, shard_bytes: int = 2 << 30) -> str:
    """Write the HF folder of `checkpoint` (local path or URI, read in place) to `output` (local path or URI)."""
    model_dir = storage.join(str(checkpoint), "model")
    if not storage.is_dir(model_dir):
        raise FileNotFoundError(
            f"{checkpoint}: not a rayalign checkpoint (no model/ folder); give a checkpoints/step-NNNNNN folder"
        )
    if not storage.is_uri(output):
        shutil.rmtree(Path(output), ignore_errors=True)
    with storage.local_output(output, prefix="rayalign-export-") as staging:
        if storage.is_uri(model_dir):  # config, tokenizer (or the adapter): small
            storage.download_dir(model_dir, staging)
        else:
            shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        config = json.loads((staging / "config.json").read_text()) if (staging / "config.json").exists() else {}
        adapter = (staging / "adapter_config.json").exists() or (staging / "aligner_config.json").exists()
        if not adapter:
            dcp_dir = storage.join(str(checkpoint), "dcp")
            export_weights(dcp_dir, staging, shard_bytes, tied=bool(config.get("tie_word_embeddings")))
        info = {"checkpoint": str(checkpoint), "adapter": adapter, **(card or {})}
        write_model_card(staging, info)
    storage.write_json(storage.join(output, MARKER), {"checkpoint": str(checkpoint), "adapter": adapter})
    return output


def write_model_card(folder: Path, info: dict) -> None:
    """README.md with the front matter Hugging Face tooling reads, then the run in plain words."""
    base = info.get("base_model") or "unknown"
    stage = info.get("stage") or "train"
    hp = info.get("hyperparameters") or {}
    data = info.get("data") or {}
    evals = info.get("eval") or {}
    lines = [
        "---",
        f"base_model: {base}" if "/" in str(base) else f"# base model: {base}",
        "library_name: " + ("peft" if info.get("adapter") else "transformers"),
        "tags:",
        "- rayalign",
        f"- {stage}",
        "---",
        "",
        f"# {info.get('name') or stage} ({stage} of {base})",
        "",
        f"Trained with rayalign's `{stage}` stage from `{base}`"
        + (" as an adapter (only the adapter's tensors are here)." if info.get("adapter") else "."),
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in hp.items()]
    lines += ["", "## Data", ""] + ([f"- {k}: {v}" for k, v in data.items()] or ["- not recorded"])
    lines += ["", "## Evaluation", ""] + ([f"- {k}: {v}" for k, v in evals.items()] or ["- not evaluated yet"])
    serve_path = info.get("path") or "<this folder>"
    lines += [
        "",
        "## Serving",
        "",
        "```bash",
        f"rayalign serve --model {serve_path}",
        f"vllm serve {serve_path}"
        if not info.get("adapter")
        else f"# adapter: rayalign serve --model {base} with this folder as an adapter",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{serve_path}")',
        "```",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """`rayalign export CHECKPOINT --output DIR`: a checkpoint folder → a Hugging Face folder."""
    ap = argparse.ArgumentParser(prog="rayalign export", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a checkpoints/step-NNNNNN folder (local path or URI)")
    ap.add_argument("--output", required=True, help="target folder (local path or URI)")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="safetensors file size (GB)")
    args = ap.parse_args(argv)
    try:
        out = export_checkpoint(
            args.checkpoint, args.output, card={"path": args.output}, shard_bytes=int(args.shard_gb * (1 << 30))
        )
    except FileNotFoundError as e:
        print(f"rayalign export: {e}")
        return 2
    print(out)
    return 0
