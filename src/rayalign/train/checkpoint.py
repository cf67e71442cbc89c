"""Sharded training checkpoints with `torch.distributed.checkpoint` (DCP), local or on object storage.

    checkpoints/step-000010/
        dcp/          each rank's shards of {"model": weights, "optim": optimizer state} + .metadata;
                      adapter runs (LoRA, Aligner) hold only the trainable tensors
        model/        config.json, tokenizer, chat template (full runs: no weights, see export);
                      adapter runs: the adapter folder itself (small, written by rank 0)
        trainer.pt    scheduler state and step
        rng-rank{r}.pt  each rank's RNG streams
        COMPLETE      written last: {"step", "files": {relative path: bytes}} of every file above;
                      a folder without it is a torn write and is ignored

No rank ever gathers the model or the optimizer: each writes the shards it owns, and DCP reshards
on load, so a run saved by N workers resumes on M. The data position is the step counter (see
data.py), so nothing else is needed to resume.

Object storage (`output_dir: s3://...`): each rank writes into a node-local staging folder, uploads
the files it wrote, and after a barrier rank 0 writes `COMPLETE` (object stores have no rename).
Resume takes the newest checkpoint that is whole: its marker's file list matches the files there
(none missing, none shorter or longer) and every shard file DCP's `.metadata` points into exists and
holds the byte range it names. A torn one (a truncated shard, a lost file, a marker written over
incomplete files) is skipped with a warning naming the folder and what is wrong, and the run resumes
from the one before.

Async saves (`checkpoint.async_save`) return after the state is staged in memory; the write, the
upload and the marker finish while training goes on, at the latest when the next save starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rayalign import storage
from rayalign.models.dcp_reader import storage_reader

COMPLETE = "COMPLETE"
log = logging.getLogger("rayalign.train")


def step_dir(output_dir: str | Path, step: int) -> str:
    return storage.join(str(output_dir), "checkpoints", f"step-{step:06d}")


def complete_checkpoints(output_dir: str | Path) -> list[str]:
    root = storage.join(str(output_dir), "checkpoints")
    steps = [p for p in storage.glob(root, "step-*")] if storage.is_dir(root) else []
    return [p for p in steps if storage.exists(storage.join(p, COMPLETE))]


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest whole checkpoint; torn ones newer than it are skipped with a warning."""
    skipped: list[str] = []
    for path in reversed(complete_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                log.warning("resuming from %s instead (skipped %d torn checkpoint(s))", path, len(skipped))
            return path
        skipped.append(path)
        log.warning("checkpoint %s is torn and is not loaded: %s", path, problem)
    if skipped:
        log.warning("no whole checkpoint in %s: training starts from step 0", output_dir)
    return None


def _sizes(path: str) -> dict[str, int]:
    """{relative path: bytes} of every file under a checkpoint folder."""
    fs, inner = storage.filesystem(path)
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(inner, allow_not_found=True, recursive=True)
    infos = storage.retrying(path, lambda: fs.get_file_info(sel))
    return {i.path[len(inner) :].lstrip("/"): int(i.size or 0) for i in infos if i.type == pafs.FileType.File}


def checkpoint_problem(path: str) -> str | None:
    """What is wrong with a marked checkpoint (a sentence), or None when it is whole."""
    try:
        marker = json.loads(storage.read_bytes(storage.join(path, COMPLETE)))
    except FileNotFoundError:
        return f"no {COMPLETE} marker"
    except (json.JSONDecodeError, UnicodeDecodeError):
        marker = None  # a plain step number: written before markers listed their files
    have = _sizes(path)
    if isinstance(marker, dict) and isinstance(marker.get("files"), dict):
        for rel, size in sorted(marker["files"].items()):
            if rel not in have:
                return f"{rel} is missing ({size} bytes were written)"
            if have[rel] != size:
                return f"{rel} has {have[rel]} bytes, {size} were written (truncated or overwritten)"
    return _dcp_problem(path, have)


def _dcp_problem(path: str, have: dict[str, int]) -> str | None:
    """DCP's `.metadata` checked against the shard files: each exists and holds the ranges it names."""
    if "dcp/.metadata" not in have:
        return "dcp/.metadata is missing"
    try:
        meta = storage_reader(storage.join(path, "dcp")).read_metadata()
    except Exception as e:
        return f"dcp/.metadata cannot be read ({type(e).__name__}: {e})"
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        rel = f"dcp/{info.relative_path}"
        need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    for rel, end in sorted(need.items()):
        if rel not in have:
            return f"{rel} is missing (dcp/.metadata names it)"
        if have[rel] < end:
            return f"{rel} has {have[rel]} bytes, dcp/.metadata needs {end} (truncated)"
    return None


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model):
    return getattr(model, "module", model)


@contextlib.contextmanager
def quiet_single_process():
    """DCP warns on every call without a process group; one process is a supported, intended case."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def staging_dir(path: str) -> Path:
    """Where a checkpoint is written before upload: the folder itself when local."""
    if not storage.is_uri(path):
        return Path(path)
    key = hashlib.sha256(path.encode()).hexdigest()[:16]
    return storage.cache_root() / "staging" / key


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def training_state(model, optimizer, adapter: bool) -> dict[str, Any]:
    """{"model", "optim"} as DCP sees them: sharded DTensors under FSDP2, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model)
    if adapter:  # the frozen base comes from the base model on resume: save only what training changes
        keep = trainable_names(model)
        weights = {k: v for k, v in weights.items() if k in keep}
    return {"model": weights, "optim": get_optimizer_state_dict(model, optimizer)}


@dataclass
class PendingSave:
    """A save whose files may still be in flight; `commit` finishes it (a collective)."""

    path: str
    local: Path
    step: int
    future: Any = None
    files_before: set[str] = field(default_factory=set)


def save_checkpoint(
    path: str,
    *,
    model,
    optimizer,
    scheduler,
    step: int,
    tokenizer,
    peft_cfg,
    rank: int,
    distributed: bool,
    async_group=None,
) -> PendingSave:
    """Collective: every rank calls it. Returns a PendingSave to `commit` (now, or later when async)."""
    import torch.distributed.checkpoint as dcp

    local = staging_dir(path)
    if rank == 0:
        shutil.rmtree(local, ignore_errors=True)
        if storage.is_uri(path):
            storage.remove_tree(path)
    _barrier(distributed)
    local.mkdir(parents=True, exist_ok=True)  # every node stages its own ranks' files
    adapter = peft_cfg.method != "none"
    state = training_state(model, optimizer, adapter)
    _write_model_folder(local / "model", model, tokenizer, peft_cfg, rank)
    if rank == 0:
        torch.save({"scheduler": scheduler.state_dict(), "step": step}, local / "trainer.pt")
    torch.save(rng_state(), local / f"rng-rank{rank}.pt")
    pending = PendingSave(path, local, step)
    if async_group is not None:
        pending.future = dcp.async_save(state, checkpoint_id=str(local / "dcp"), process_group=async_group)
    else:
        with quiet_single_process():
            dcp.save(state, checkpoint_id=str(local / "dcp"), no_dist=not distributed)
    return pending


def commit(pending: PendingSave, rank: int, distributed: bool) -> str:
    """Wait for the shards, upload this rank's files (object storage), then rank 0 writes COMPLETE."""
    if pending.future is not None:
        pending.future.result()
    _barrier(distributed)
    files = {f.relative_to(pending.local).as_posix(): f.stat().st_size for f in _own_files(pending, rank)}
    if storage.is_uri(pending.path):
        for rel in sorted(files):
            with storage.open_output(storage.join(pending.path, rel)) as out, open(pending.local / rel, "rb") as fh:
                shutil.copyfileobj(fh, out, length=8 << 20)
    if distributed:  # every rank's file list, for the marker (ranks on other nodes staged their own)
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, files)
        files = {k: v for part in gathered for k, v in part.items()}
    if rank == 0:
        storage.write_text(
            storage.join(pending.path, COMPLETE), json.dumps({"step": pending.step, "files": files}, sort_keys=True)
        )
    _barrier(distributed)
    if storage.is_uri(pending.path):  # uploaded: the node keeps no copy (ranks on one node share the folder)
        shutil.rmtree(pending.local, ignore_errors=True)
    return pending.path


def _own_files(pending: PendingSave, rank: int) -> list[Path]:
    """Rank r's files: the DCP shards it wrote (`__r_*`) and its RNG file; rank 0 everything else."""
    mine = []
    for f in sorted(pending.local.rglob("*")):
        if not f.is_file():
            continue
        name = f.name
        if name.startswith("__") and name.endswith(".distcp"):
            own = name.startswith(f"__{rank}_")
        elif name.startswith("rng-rank"):
            own = name == f"rng-rank{rank}.pt"
        else:
            own = rank == 0
        if own:
            mine.append(f)
    return mine


def _write_model_folder(folder: Path, model, tokenizer, peft_cfg, rank: int) -> None:
    """config + tokenizer (full runs) or the adapter folder (adapter runs: gathers only trainable tensors)."""
    base = unwrap(model)
    if peft_cfg.method != "none":
        from rayalign.models.adapters import save_adapter

        gathered = {}
        for name, p in base.named_parameters():
            if p.requires_grad:  # small by construction; every rank joins the all-gather
                full = getattr(p, "full_tensor", None)
                gathered[name] = (full() if full is not None else p).detach().cpu()
        if rank == 0:
            save_adapter(base, peft_cfg, folder, state_dict=gathered)
    elif rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        base.config.save_pretrained(str(folder))
        gen = getattr(base, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(folder))
    if rank == 0:
        tokenizer.save_pretrained(str(folder))


def _load_small(path: str) -> Any:
    """A small torch file of a checkpoint (scheduler, RNG) read in place, local or on object storage."""
    import io

    return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)


def load_training_state(path: str, *, model, optimizer, scheduler, rank: int, adapter: bool, distributed: bool) -> int:
    """Restore weights, optimizer (resharded to this world size), scheduler and RNG; return the step.

    `path` may be a URI: every rank reads its own parts of the shards where they are."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = training_state(model, optimizer, adapter)
    with quiet_single_process():
        dcp.load(state, storage_reader=storage_reader(storage.join(path, "dcp")), no_dist=not distributed)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=not adapter))
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"])
    trainer = _load_small(storage.join(path, "trainer.pt"))
    scheduler.load_state_dict(trainer["scheduler"])
    rng_file = storage.join(path, f"rng-rank{rank}.pt")
    if storage.exists(rng_file):  # absent when resuming on more ranks than were saved
        set_rng_state(_load_small(rng_file))
    return int(trainer["step"])


def prune(output_dir: str | Path, keep_last: int, protect: str | None = None) -> None:
    done = complete_checkpoints(output_dir)
    for old in done[:-keep_last] if keep_last > 0 else []:
        if old != protect:
            storage.remove(storage.join(old, COMPLETE))  # unmark first: a half-deleted folder is absent
            storage.remove_tree(old)


def _barrier(distributed: bool) -> None:
    if distributed:
        torch.distributed.barrier()
