"""Stage records (`<stage dir>/stage.json`) and the run's `summary.json`, on any storage root.

A record is the commit marker of a stage instance: written `running` before it starts and
`complete` (with its `StageResult`) after it returns; a stage with no complete record is not done.
Every write goes through `storage.write_json` (atomic locally, one PUT on object stores).
Records (`StageRecord`), the run's summary (`RunSummary`) and its entries (`StageSummary`) are
typed; their JSON forms are what the files hold.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from rayalign import storage
from rayalign.pipeline.spec import Step, stage_dir
from rayalign.results import Counts, StageResult, Status

STAGE_RECORD = "stage.json"
SUMMARY = "summary.json"
OUTPUT_FIELDS = ("output", "output_dir")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StageRecord(BaseModel):
    """`<stage dir>/stage.json`: one stage instance's status, config and (once complete) result."""

    model_config = ConfigDict(extra="forbid")

    name: str
    id: str
    round: int | None = None
    stage: str
    status: Status
    config_hash: str
    config: dict[str, Any] = {}
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    result: StageResult | None = None
    error: str | None = None
    traceback: str | None = None

    def complete_with(self, config_hash: str) -> bool:
        return self.status == Status.COMPLETE and self.config_hash == config_hash

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"result"})
        data["result"] = self.result.to_json() if self.result is not None else None
        return data


class StageSummary(BaseModel):
    """One stage's entry of summary.json: status, timing, output, counts, metrics, full result."""

    name: str
    id: str
    round: int | None = None
    stage: str
    status: Status
    skipped: bool
    seconds: float | None = None
    config_hash: str
    output: str | None = None
    checkpoint: str | None = None
    counts: Counts | None = None
    metrics: dict[str, float] = {}
    result: StageResult | None = None

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"counts", "result"})
        data["counts"] = self.counts.to_json() if self.counts is not None else None
        data["result"] = self.result.to_json() if self.result is not None else None
        return data


class RunSummary(BaseModel):
    """`<run_dir>/summary.json`: the run's status, its stages in order and the final model."""

    run_dir: str
    status: Status
    updated: str
    seconds: float
    stages: list[StageSummary]
    final_model: str | None = None
    final_model_withheld: str | None = None  # why final_model is null though training finished (a failed gate)

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"stages", "final_model_withheld"})
        data["stages"] = [s.to_json() for s in self.stages]
        if self.final_model_withheld:
            data["final_model_withheld"] = self.final_model_withheld
        return data


def read_record(run_dir: str, step_id: str) -> StageRecord | None:
    """The record of a stage instance, or None (absent, torn or of an unknown shape: not finished)."""
    data = storage.read_json(storage.join(stage_dir(run_dir, step_id), STAGE_RECORD))
    if not isinstance(data, dict):
        return None
    try:
        return StageRecord.model_validate(data)
    except ValidationError:
        return None


def write_record(run_dir: str, step_id: str, record: StageRecord) -> None:
    storage.write_json(storage.join(stage_dir(run_dir, step_id), STAGE_RECORD), record.to_json())


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


def stage_summary(step: Step, record: StageRecord, skipped: bool) -> StageSummary:
    """One stage's entry of summary.json, from its record."""
    result = record.result
    config = record.config
    output = (result.output if result else None) or next((config[k] for k in OUTPUT_FIELDS if config.get(k)), None)
    return StageSummary(
        name=step.spec.name,
        id=step.id,
        round=step.round,
        stage=step.spec.stage,
        status=record.status,
        skipped=skipped,
        seconds=record.seconds,
        config_hash=record.config_hash,
        output=output,
        checkpoint=result.checkpoint if result else None,
        counts=result.counts if result else None,
        metrics=dict(result.metrics) if result else {},
        result=result,
    )


def write_summary(
    run_dir: str,
    status: Status,
    stages: list[StageSummary],
    seconds: float,
    final_model: str | None,
    withheld: str | None = None,
) -> RunSummary:
    """summary.json; `withheld`: why `final_model` is null although training finished (a failed gate)."""
    summary = RunSummary(
        run_dir=run_dir,
        status=status,
        updated=now(),
        seconds=round(seconds, 3),
        stages=stages,
        final_model=final_model,
        final_model_withheld=withheld,
    )
    storage.write_json(storage.join(run_dir, SUMMARY), summary.to_json())
    return summary


def read_summary(run_dir: str) -> dict | None:
    """summary.json as JSON (read as written: a report may read runs of other versions)."""
    s = storage.read_json(storage.join(run_dir, SUMMARY))
    return s if isinstance(s, dict) else None
