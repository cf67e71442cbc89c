"""Run a pipeline's steps in order: resolve each config, skip finished instances, record the rest.

The runner owns the order and the records; what a person sees goes through a display
(`rayalign.pipeline.render`), and what a stage returns is a `StageResult`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rayalign import storage
from rayalign.config import Cfg, ConfigError, digest, validate_config
from rayalign.pipeline import records
from rayalign.pipeline.records import OUTPUT_FIELDS, RunSummary, StageRecord, StageSummary
from rayalign.pipeline.refs import Entry, Scope, Unresolved, interpolate, resolve
from rayalign.pipeline.spec import PipelineConfig, StageSpec, Step, stage_dir, steps
from rayalign.results import StageResult, Status


class StageFailed(RuntimeError):
    def __init__(self, name: str, stage: str, error: str, resume_cmd: str | None):
        self.name, self.stage, self.error, self.resume_cmd = name, stage, error, resume_cmd
        msg = f"stage {name!r} ({stage}) failed: {error}"
        if resume_cmd:
            msg += f"\nfix the cause, then resume (finished stages are skipped):\n    {resume_cmd}"
        super().__init__(msg)


class EmptyOutput(RuntimeError):
    """A dataset stage produced no rows: everything downstream would fail on an empty input."""


@dataclass(frozen=True)
class Resolved:
    cfg: Cfg
    run: Callable[[Cfg], StageResult]
    hash: str
    upstream: frozenset[str] = frozenset()  # the earlier steps whose results the config references


class State:
    """What earlier steps left behind: entries by step id and the id each stage name means now."""

    def __init__(self, pipe: PipelineConfig):
        self.pipe = pipe
        self.entries: dict[str, Entry] = {}
        self.names: dict[str, str] = {}
        self.recorded: dict[str, str] = {}  # per step id, the hash its record held when this run read it

    def scope(self, step: Step | None = None) -> Scope:
        return Scope(self.pipe.run_dir, self.pipe.defaults, dict(self.entries), dict(self.names), step)

    def add(self, step: Step, entry: Entry) -> None:
        self.entries[step.id] = entry
        self.names[step.spec.name] = step.id


def resolve_step(pipe: PipelineConfig, step: Step, scope: Scope, where: str) -> Resolved:
    """The step's typed config (defaults, output folder, references applied), run function, hash."""
    from rayalign.stages import get_stage

    spec = step.spec
    try:
        cfg_cls, run_fn = get_stage(spec.stage)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    fields = cfg_cls.accepted_keys()
    raw = copy.deepcopy(spec.config)
    for key, val in pipe.defaults.items():
        if key in fields and key not in raw:
            raw[key] = copy.deepcopy(val)
    for key in OUTPUT_FIELDS:  # dataset stages name it `output`, training stages `output_dir`
        if key in fields and key not in raw:
            raw[key] = stage_dir(pipe.run_dir, step.id)
    raw, used = resolve(raw, scope, f"{where}.config")
    cfg = validate_config(cfg_cls, raw, where)
    return Resolved(cfg, run_fn, stage_hash(spec, cfg, {u: scope.entries[u].hash for u in used}), used)


def stage_hash(spec: StageSpec, cfg: Cfg, upstream: dict[str, str]) -> str:
    """The stage's config hash combined with the hashes of the earlier stages it references.

    Without the second part a stage would be skipped after its input changed under the same path
    (sft re-trained with a new lr still writes checkpoints/step-000020): a change upstream now
    re-runs every stage that reads from it, transitively.
    """
    return combined_hash(spec.stage, cfg.hash(), upstream)


def combined_hash(stage: str, cfg_hash: str, upstream: dict[str, str]) -> str:
    blob = json.dumps([stage, cfg_hash, sorted(upstream.items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def recorded_before_new_options(old: StageRecord, r: Resolved, stage: str, recorded: dict[str, str]) -> bool:
    """Whether a complete record was written by an earlier rayalign for this very work: its config,
    read with today's defaults for the options added since, is today's config, and the hash it holds
    is the one that version computed from its own options (the record's keys) and from the hashes
    its upstream stages' records held. A new option's default keeps the old behaviour, so upgrading
    rayalign does not re-run finished stages; any changed setting, or an upstream stage that ran
    again, still re-runs it."""
    if old.status != Status.COMPLETE or any(u not in recorded for u in r.upstream):
        return False
    then = with_todays_defaults(old, type(r.cfg))
    if then is None or then.hash() != r.cfg.hash():
        return False
    own = digest(_keys_of(then.hash_data(), old.config))
    return combined_hash(stage, own, {u: recorded[u] for u in r.upstream}) == old.config_hash


def with_todays_defaults(old: StageRecord, cfg_cls: type[Cfg]) -> Cfg | None:
    """A record's config read by today's config class (options added since take their defaults);
    None when it no longer reads (an option that no longer exists, a value no longer valid)."""
    try:
        return cfg_cls.model_validate(old.config)
    except ValidationError:
        return None


def _keys_of(data: Any, old: Any) -> Any:
    """`data` restricted, at every dict level, to the keys `old` has."""
    if not isinstance(data, dict) or not isinstance(old, dict):
        return data
    return {k: _keys_of(v, old[k]) for k, v in data.items() if k in old}


def where_of(source: str, index: int, step: Step) -> str:
    return f"{source}: stages[{index}] ({step.id})"


def validate_pipeline(pipe: PipelineConfig, source: str = "<pipeline>") -> list[Cfg]:
    """Resolve and validate every step's config without running anything (results as placeholders)."""
    state, cfgs = State(pipe), []
    for i, step in enumerate(steps(pipe)):
        r = resolve_step(pipe, step, state.scope(step), where_of(source, i, step))
        state.add(step, Entry(r.cfg.model_dump(mode="json"), None, r.hash))
        cfgs.append(r.cfg)
    return cfgs


def check_not_empty(spec: StageSpec, result: StageResult) -> None:
    counts = result.counts
    if spec.allow_empty or counts is None:
        return
    if counts.in_ > 0 and counts.out_rows == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in counts.by_reason.items()) or "none recorded"
        raise EmptyOutput(
            f"read {counts.in_} rows but wrote none (quarantined by reason: {reasons}); "
            f"see its quarantine/ folder, or set allow_empty: true on the stage"
        )


def failed_gates(summaries: list[StageSummary]) -> list[str]:
    """One line per stage whose promotion gate failed (an eval stage with `gate`: metric gate/passed 0)."""
    out = []
    for s in summaries:
        if s.metrics.get("gate/passed") == 0.0:
            gate = (s.result.details.get("gate") if s.result else None) or {}
            out.append(f"{s.id or s.name}: gate failed ({gate.get('reason', 'see its results.json')})")
    return out


def final_model(pipe: PipelineConfig, summaries: list[StageSummary], state: State | None) -> str | None:
    """The `final_model` reference if given (once every stage ran), else the last checkpoint; None
    when a stage's promotion gate failed (the model is not promoted)."""
    if failed_gates(summaries):
        return None
    if pipe.final_model and state is not None:
        value = interpolate(pipe.final_model, state.scope(), "final_model")
        return None if isinstance(value, Unresolved) else str(value)
    for s in reversed(summaries):
        if s.checkpoint:
            return s.checkpoint
    return None


def run_pipeline(
    pipe: PipelineConfig,
    *,
    source: str = "<pipeline>",
    resume_cmd: str | None = None,
    stop_after: str | None = None,
    display: Any = None,
) -> dict:
    """Run every step in order, skipping finished ones. Returns the summary (also in run_dir).

    Raises `StageFailed` when a stage raises (its record then says `failed` with the error).
    """
    from rayalign.pipeline.render import make_display

    display = display or make_display()
    validate_pipeline(pipe, source)  # a typo in the last stage fails now, not after hours of work
    storage.makedirs(pipe.run_dir)
    if pipe.start_ray:
        from rayalign.raycluster import ensure_ray

        # workers' output reaches the driver, whose descriptors `rayalign run` points at the run's
        # log file unless --verbose; Ray's own progress bars stay off either way
        ensure_ray(log_to_driver=True)
    plan = steps(pipe)
    run = _Run(pipe, plan, source, resume_cmd, display)
    display.start(pipe.run_dir, plan)
    try:
        for i, step in enumerate(plan):
            run.step(i, step)
            if stop_after and step.spec.name == stop_after and (step.round is None or step.round == step.times):
                display.note(f"stopping after {step.spec.name} as asked (--stop-after)")
                break
    finally:
        display.close()
    done = len(run.summaries) == len(plan)
    summary = run.write(Status.COMPLETE if done else Status.PARTIAL, final=True)
    display.finish(summary.to_json())
    return summary.to_json()


class _Run:
    """One invocation of the runner: the state, the stage summaries so far, the display."""

    def __init__(self, pipe: PipelineConfig, plan: list[Step], source: str, resume_cmd: str | None, display: Any):
        self.pipe, self.plan, self.source, self.resume_cmd, self.display = pipe, plan, source, resume_cmd, display
        self.state = State(pipe)
        self.summaries: list[StageSummary] = []
        self.t0 = time.time()

    def write(self, status: Status, final: bool = False, extra: list[StageSummary] | None = None) -> RunSummary:
        stages = self.summaries + (extra or [])
        model = final_model(self.pipe, stages, self.state if final else None)
        withheld = "; ".join(failed_gates(stages)) or None
        return records.write_summary(self.pipe.run_dir, status, stages, time.time() - self.t0, model, withheld)

    def step(self, i: int, step: Step) -> None:
        where = where_of(self.source, i, step)
        r = resolve_step(self.pipe, step, self.state.scope(step), where)
        run_dir = self.pipe.run_dir
        old = records.read_record(run_dir, step.id)
        label = f"[{i + 1}/{len(self.plan)}] {step.title}"
        if old and old.complete_with(r.hash):
            self.display.note(f"✓ {label}: already complete (config {r.hash}); skipping", style="green")
            record, skipped = old, True
        elif old and recorded_before_new_options(old, r, step.spec.stage, self.state.recorded):
            self.display.note(
                f"✓ {label}: already complete (recorded by an earlier rayalign, config {old.config_hash}; "
                f"the options added since are at their defaults); skipping",
                style="green",
            )
            record = old.model_copy(update={"config_hash": r.hash, "config": r.cfg.model_dump(mode="json")})
            skipped = True
            records.write_record(run_dir, step.id, record)
        else:
            self._announce(label, step, old, r.hash)
            record, skipped = self._execute(i, step, r), False
        # what a later stage's record, if an earlier rayalign wrote it, was computed from
        self.state.recorded[step.id] = old.config_hash if old and skipped else r.hash
        self.state.add(step, Entry(record.config, record.result, r.hash))
        self.summaries.append(records.stage_summary(step, record, skipped))
        self.write(Status.RUNNING)
        self.display.stage_done(i, step, self.summaries[-1].to_json())

    def _announce(self, label: str, step: Step, old: StageRecord | None, h: str) -> None:
        run_dir = self.pipe.run_dir
        if old and old.status == Status.COMPLETE:
            self.display.note(
                f"{label}: its config or an upstream stage changed ({old.config_hash} → {h}); "
                f"clearing {stage_dir(run_dir, step.id)} and running again",
                style="yellow",
            )
            # the stage's own resume (finished shards, checkpoints) must not reuse stale work
            records.clear_stage_dir(run_dir, step.id)
        elif old and old.status in (Status.RUNNING, Status.FAILED):
            self.display.note(f"{label}: resuming an unfinished run ({old.status} since {old.started})", style="yellow")

    def _execute(self, i: int, step: Step, r: Resolved) -> StageRecord:
        run_dir = self.pipe.run_dir
        record = StageRecord(
            name=step.spec.name,
            id=step.id,
            round=step.round,
            stage=step.spec.stage,
            status=Status.RUNNING,
            config_hash=r.hash,
            config=r.cfg.model_dump(mode="json"),
            started=records.now(),
        )
        records.write_record(run_dir, step.id, record)
        self.display.stage_started(i, step, stage_dir(run_dir, step.id), record.config)
        t0 = time.time()
        try:
            result = r.run(r.cfg)
            if not isinstance(result, StageResult):
                raise TypeError(f"the {step.spec.stage} stage returned {type(result).__name__}, not a StageResult")
            check_not_empty(step.spec, result)
        except BaseException as e:  # record the failure (also on Ctrl-C / SIGTERM), then stop the run
            error = f"{type(e).__name__}: {e}"
            record = record.model_copy(
                update=dict(
                    status=Status.FAILED,
                    finished=records.now(),
                    seconds=round(time.time() - t0, 3),
                    error=error,
                    traceback=traceback.format_exc()[-8000:],
                )
            )
            records.write_record(run_dir, step.id, record)
            self.write(Status.FAILED, extra=[records.stage_summary(step, record, False)])
            self.display.stage_failed(i, step, error)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise StageFailed(step.id, step.spec.stage, error, self.resume_cmd) from e
        record = record.model_copy(
            update=dict(
                status=Status.COMPLETE, finished=records.now(), seconds=round(time.time() - t0, 3), result=result
            )
        )
        records.write_record(run_dir, step.id, record)
        return record
