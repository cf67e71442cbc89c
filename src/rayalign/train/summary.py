"""The end of a run: export the final checkpoint, merge a LoRA adapter, write `summary.json`.

Every rank calls `finish` (it all-reduces the data-read counters); rank 0 does the writing. The
result is a `StageResult`: `checkpoint` is the exported Hugging Face folder, `metrics` holds numbers
only (steps, final loss, the objective's own metrics), `details` the paths and the rest.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from rayalign import storage
from rayalign.results import StageResult, numeric_metrics
from rayalign.train import checkpoint as ckpt
from rayalign.train.config import TrainConfig
from rayalign.train.data import RowSource


class FinishedRun(Protocol):
    """What the end of a run reads of the trainer that ran it (`rayalign.train.trainer.Trainer`)."""

    cfg: TrainConfig
    rank: int
    world: int
    distributed: bool
    out: str
    source: RowSource
    start: int  # the step the run resumed at
    last_step: int
    total_steps: int
    last_record: dict[str, Any]
    last_checkpoint: str | None


# logged every step but not a result of the run (timings, positions, schedule)
NOT_RESULTS = {
    "time",
    "cpu_time",
    "tokens_per_s",
    "mfu",
    "step",
    "epoch",
    "lr",
    "grad_norm",
    "tokens",
    "targets",
    "loss",
}


def _read_totals(trainer: FinishedRun) -> dict[str, int]:
    s = trainer.source.stats
    t = torch.tensor([s.rows_read, s.bytes_read, s.groups_read], dtype=torch.float64)
    if trainer.distributed:
        torch.distributed.all_reduce(t)
    rows, nbytes, groups = (int(x) for x in t.tolist())
    return {"rows_read": rows, "bytes_read": nbytes, "groups_read": groups, "dataset_rows": len(trainer.source)}


def card_info(trainer: FinishedRun) -> dict[str, Any]:
    cfg = trainer.cfg
    hp = {
        "objective": cfg.objective.name,
        "peft": cfg.peft.method,
        "lr": cfg.optim.lr,
        "steps": trainer.total_steps,
        "micro_batch_size": cfg.micro_batch_size,
        "grad_accum": cfg.grad_accum,
        "workers": trainer.world,
        "seq_len": cfg.data.seq_len,
        "seed": cfg.seed,
    }
    final = trainer.last_record.get("loss")
    evals = {"final train loss": round(final, 4)} if isinstance(final, float) else {}
    return {
        "base_model": cfg.model,
        "stage": cfg.objective.name,
        "name": cfg.name,
        "hyperparameters": hp,
        "data": {"packed rows": len(trainer.source), "path": cfg.data.path},
        "eval": evals,
    }


def export_final(trainer: FinishedRun, checkpoint: str) -> dict[str, str]:
    """Rank 0: the HF folder (adapter folder for adapter runs) and, for LoRA with merge, the merged model."""
    from rayalign.models.export import export_checkpoint

    cfg = trainer.cfg
    final = storage.join(trainer.out, "final")
    info = card_info(trainer)
    export_checkpoint(checkpoint, final, card={**info, "path": final})
    if cfg.peft.method == "lora" and cfg.peft.merge:
        merged = storage.join(trainer.out, "merged")
        merge_adapter(cfg.model, final, merged, info)
        return {"checkpoint": merged, "adapter": final}
    return {"checkpoint": final}


def merge_adapter(base_spec: str, adapter_dir: str, target: str, info: dict) -> str:
    """Fold a LoRA adapter into a CPU copy of the base and save a plain HF folder (small models)."""
    from rayalign.models.adapters import apply_adapter, merge_lora
    from rayalign.models.export import write_model_card
    from rayalign.models.loader import load_model, load_tokenizer

    merged = merge_lora(apply_adapter(load_model(base_spec, dtype="fp32"), storage.local_copy(adapter_dir)))
    with storage.local_output(target, prefix="rayalign-merged-") as local:
        merged.save_pretrained(str(local), safe_serialization=True)
        load_tokenizer(base_spec).save_pretrained(str(local))
        write_model_card(local, {**info, "adapter": False, "path": target})
    return target


def finish(trainer: FinishedRun) -> StageResult:
    cfg, rank = trainer.cfg, trainer.rank
    stopped_early = bool(cfg.stop_at_step and cfg.stop_at_step < trainer.total_steps)
    record = trainer.last_record
    if not record and rank == 0:  # nothing left to run (resumed at the end): report the logged tail
        from rayalign.train.metrics import read_metrics

        record = (read_metrics(trainer.out) or [{}])[-1]
    last = trainer.last_checkpoint or ckpt.latest_checkpoint(trainer.out)
    details: dict[str, Any] = {
        "metrics_file": storage.join(trainer.out, "metrics.jsonl"),
        "checkpoint_dir": last,
        "stopped_early": stopped_early,
        "world": trainer.world,
        "resumed_at": trainer.start,
        "data": _read_totals(trainer),
    }
    checkpoint = None
    if rank == 0 and last is not None and not stopped_early and cfg.checkpoint.export:
        paths = export_final(trainer, last)
        checkpoint = paths.pop("checkpoint")
        details.update(paths)
    steps = trainer.last_step if trainer.total_steps > trainer.start else trainer.start
    metrics = {
        "steps": steps,
        "total_steps": trainer.total_steps,
        **numeric_metrics({k: v for k, v in record.items() if k not in NOT_RESULTS}),
    }
    if isinstance(record.get("loss"), (int, float)):
        metrics["final_loss"] = record["loss"]
    result = StageResult(
        stage=cfg.objective.name,
        output=trainer.out,
        checkpoint=checkpoint,
        metrics=numeric_metrics(metrics),
        details=details,
    )
    if rank == 0:
        storage.write_json(storage.join(trainer.out, "summary.json"), result.to_json())
    if trainer.distributed:
        torch.distributed.barrier()
    return result
