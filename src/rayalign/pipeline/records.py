"""Stage records (`<stage dir>/stage.json`) and the run's `summary.json`, on any storage root.

A record is the commit marker of a stage instance: written `running` before it starts and
`complete` (with its `StageResult`) after it returns; a stage with no complete record is not done.
Every write goes through `storage.write_json` (atomic locally, one PUT on object stores).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rayalign import storage
from rayalign.pipeline.spec import Step, stage_dir
from rayalign.results import Counts, StageResult, Status, numeric_metrics

STAGE_RECORD = "stage.json"
SUMMARY = "summary.json"
OUTPUT_FIELDS = ("output", "output_dir")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_record(run_dir: str, step_id: str) -> dict | None:
    """The record of a stage instance, or None (absent or torn: treated as not finished)."""
    record = storage.read_json(storage.join(stage_dir(run_dir, step_id), STAGE_RECORD))
    return record if isinstance(record, dict) else None


def write_record(run_dir: str, step_id: str, record: dict) -> None:
    storage.write_json(storage.join(stage_dir(run_dir, step_id), STAGE_RECORD), record)


def clear_stage_dir(run_dir: str, step_id: str) -> None:
    """Remove everything in the stage's folder except its record (outputs placed elsewhere by an
    explicit `output:` are left alone; their own stage decides whether they still match)."""
    for child in storage.list_dir(stage_dir(run_dir, step_id)):
        if storage.basename(child) == STAGE_RECORD:
            continue
        if storage.is_dir(child):
            storage.remove_tree(child)
        else:
            storage.remove(child)


def record_result(record: dict | None) -> StageResult | None:
    if not record or not isinstance(record.get("result"), dict):
        return None
    return StageResult.from_json(record["result"])


# --- transitional: delete once every stage returns a StageResult (after the branches merge) ---
LEGACY_DROP = ("shards", "time", "started", "finished")  # bulky, or timestamps that are no metric


def legacy_result(stage: str, value: Any) -> StageResult:
    """TRANSITIONAL: turn a stage's legacy dict summary into a `StageResult`; a StageResult passes.

    The lead deletes this function (and its one caller in the runner) after the merge, when every
    stage returns a `StageResult`.
    """
    if isinstance(value, StageResult):
        return value
    if not isinstance(value, dict):
        return StageResult(stage=stage, details={"value": json.loads(json.dumps(value, default=str))})
    d = {k: v for k, v in value.items() if k not in LEGACY_DROP}
    counts = Counts.model_validate(d.pop("counts")) if isinstance(d.get("counts"), dict) else None
    metrics = numeric_metrics(d)
    if isinstance(d.get("metrics"), dict):
        metrics.update(numeric_metrics(d.pop("metrics")))
    details = {k: v for k, v in d.items() if k not in metrics and k not in ("checkpoint", "output")}
    output = d.get("output") if isinstance(d.get("output"), str) else None
    checkpoint = d.get("checkpoint") if isinstance(d.get("checkpoint"), str) else None
    return StageResult(
        stage=stage,
        output=output,
        checkpoint=checkpoint,
        counts=counts,
        metrics=metrics,
        details=json.loads(json.dumps(details, default=str)),
    )


# --- end transitional ---


def stage_summary(step: Step, record: dict, skipped: bool) -> dict:
    """One stage's entry of summary.json: status, timing, output, counts, metrics, full result."""
    result = record_result(record)
    config = record.get("config") or {}
    output = (result.output if result else None) or next((config[k] for k in OUTPUT_FIELDS if config.get(k)), None)
    return {
        "name": step.spec.name,
        "id": step.id,
        "round": step.round,
        "stage": step.spec.stage,
        "status": record.get("status"),
        "skipped": skipped,
        "seconds": record.get("seconds"),
        "config_hash": record.get("config_hash"),
        "output": output,
        "checkpoint": result.checkpoint if result else None,
        "counts": result.counts.to_json() if result and result.counts else None,
        "metrics": dict(result.metrics) if result else {},
        "result": result.to_json() if result else None,
    }


def write_summary(
    run_dir: str,
    status: Status,
    stages: list[dict],
    seconds: float,
    final_model: str | None,
    withheld: str | None = None,
) -> dict:
    """summary.json; `withheld`: why `final_model` is null although training finished (a failed gate)."""
    summary = {
        "run_dir": run_dir,
        "status": status.value,
        "updated": now(),
        "seconds": round(seconds, 3),
        "stages": stages,
        "final_model": final_model,
    }
    if withheld:
        summary["final_model_withheld"] = withheld
    storage.write_json(storage.join(run_dir, SUMMARY), summary)
    return summary


def read_summary(run_dir: str) -> dict | None:
    s = storage.read_json(storage.join(run_dir, SUMMARY))
    return s if isinstance(s, dict) else None
