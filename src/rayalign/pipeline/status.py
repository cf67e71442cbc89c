"""`rayalign status RUN_DIR [--json]`: a pipeline run's state, read from its folder (local or s3://).

    rayalign status runs/quickstart
    rayalign status s3://bucket/runs/tiny --json

Everything comes from what the run writes (nothing talks to a running process, so a run on a
cluster is read the same way as a local one): `<run_dir>/run.json` (the command that started it),
each stage's record `<stage dir>/stage.json` (status, times, config, result or error), the running
stage's progress files (`rayalign.pipeline.progress`), `summary.json`, and training stages'
`checkpoints/step-N/` folders. With `run.json` the pipeline YAML is read again (when it is still
there) so that stages that have not started are listed as pending.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rayalign import storage
from rayalign.pipeline import records
from rayalign.pipeline.progress import fmt_seconds, read_progress

RUN_FILE = "run.json"  # {"command": ..., "pipeline": ..., "overrides": [...]}
ROUND_PREFIX = "round-"
# a running stage that wrote nothing (record, metrics, shard markers, eval progress) for this long
# is flagged: its process may have been killed without recording it (kill -9, a lost node)
STALE_S = 600.0
PROGRESS_FILES = ("stage.json", "metrics.jsonl", "_progress.json", "_plan.json")


@dataclass
class StageStatus:
    id: str
    stage: str
    state: str  # pending | running | complete | failed
    seconds: float | None = None  # run time (complete / failed) or time since it started (running)
    started: str | None = None
    counts: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    progress: str | None = None  # the running stage's progress line
    quiet_s: float | None = None  # a running stage: seconds since it last wrote a progress file
    checkpoint: str | None = None  # the last complete checkpoint of a training stage
    error: str | None = None


@dataclass
class RunStatus:
    run_dir: str
    state: str  # not started | running | complete | partial | failed
    stages: list[StageStatus]
    updated: str | None = None
    final_model: str | None = None
    resume: str | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _parse_time(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp() if text else None
    except ValueError:
        return None


def _stage_ids(run_dir: str) -> list[str]:
    """Ids of every stage folder with a record: `<run_dir>/<name>/` and `<run_dir>/round-N/<name>/`."""
    ids = []
    for child in storage.list_dir(run_dir):
        name = storage.basename(child)
        if storage.exists(storage.join(child, records.STAGE_RECORD)):
            ids.append(name)
        elif name.startswith(ROUND_PREFIX) and storage.is_dir(child):
            ids += [
                f"{name}/{storage.basename(g)}"
                for g in storage.list_dir(child)
                if storage.exists(storage.join(g, records.STAGE_RECORD))
            ]
    return ids


def _planned(run: dict | None) -> list[tuple[str, str]]:
    """(id, stage) of every step of the pipeline that started the run, when its YAML is readable."""
    if not run or not run.get("pipeline"):
        return []
    from rayalign.pipeline.spec import load_pipeline, steps

    try:
        pipe = load_pipeline(run["pipeline"], list(run.get("overrides") or []))
    except Exception:  # moved, edited into something invalid: the records alone still tell the state
        return []
    return [(s.id, s.spec.stage) for s in steps(pipe)]


def _last_write(folders: list[str]) -> float | None:
    """The newest modification time (epoch seconds) of the progress files in `folders`."""
    import pyarrow.fs as pafs

    times = []
    for folder in dict.fromkeys(folders):
        fs, root = storage.filesystem(folder)
        paths = [f"{root.rstrip('/')}/{name}" for name in PROGRESS_FILES]
        infos = fs.get_file_info(paths)
        infos += fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/_progress", allow_not_found=True))
        times += [i.mtime.timestamp() for i in infos if i.type == pafs.FileType.File and i.mtime is not None]
    return max(times) if times else None


def _last_checkpoint(folder: str) -> str | None:
    if not storage.is_dir(storage.join(folder, "checkpoints")):
        return None
    from rayalign.train.checkpoint import complete_checkpoints

    # the newest marked checkpoint, read cheaply (no file listing or DCP metadata): a resume checks
    # it is whole before loading it and falls back to an older one if it is torn
    marked = complete_checkpoints(folder)
    return marked[-1] if marked else None


def stage_status(run_dir: str, step_id: str, stage: str = "", now: float | None = None) -> StageStatus:
    record = records.read_record(run_dir, step_id)
    if record is None:
        return StageStatus(step_id, stage, "pending")
    state = str(record.status)
    config = record.config
    st = StageStatus(step_id, record.stage or stage, state, record.seconds, record.started)
    result = record.result
    if result is not None:
        st.counts = result.counts.to_json() if result.counts else None
        st.metrics = dict(result.metrics)
        st.checkpoint = result.checkpoint
    folder = config.get("output_dir") or (config.get("train") or {}).get("output_dir") or config.get("output")
    folder = folder or storage.join(run_dir, *step_id.split("/"))
    if st.checkpoint is None and state != "complete":
        st.checkpoint = _last_checkpoint(str(folder))
    if state == "running":
        since = _parse_time(record.started) or (now or datetime.now(UTC).timestamp())
        st.seconds = round((now or datetime.now(UTC).timestamp()) - since, 1)
        try:
            p = read_progress(str(folder), config, since)
        except Exception:  # a half-written progress file: the state is still worth showing
            p = None
        st.progress = p.line() if p else None
        last = _last_write([str(folder), storage.join(run_dir, *step_id.split("/"))])
        st.quiet_s = round((now or datetime.now(UTC).timestamp()) - last, 1) if last else None
    if state == "failed":
        st.error = record.error or ""
    return st


def run_status(run_dir: str) -> RunStatus:
    if not storage.is_dir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run folder (give the pipeline's run_dir)")
    run = storage.read_json(storage.join(run_dir, RUN_FILE))
    run = run if isinstance(run, dict) else None
    summary = records.read_summary(run_dir) or {}
    order = _planned(run)
    known = {i for i, _ in order}
    # stages on disk the plan does not name (no run.json, or a plan changed since): after the plan,
    # in the order the summary lists them, then by start time
    summary_ids = [s.get("id") for s in summary.get("stages", []) if s.get("id")]
    extra = [i for i in _stage_ids(run_dir) if i not in known]
    extra.sort(key=lambda i: (summary_ids.index(i) if i in summary_ids else len(summary_ids), i))
    now = datetime.now(UTC).timestamp()
    stages = [stage_status(run_dir, i, kind, now) for i, kind in order]
    stages += [stage_status(run_dir, i, "", now) for i in extra]
    failed = [s for s in stages if s.state == "failed"]
    if not stages:
        state = "not started"
    elif any(s.state == "running" for s in stages):
        state = "running"
    elif failed:
        state = "failed"
    elif all(s.state == "complete" for s in stages):
        state = str(summary.get("status") or "complete")
    else:
        state = "partial"
    resume = (run or {}).get("command")
    if resume is None and state != "complete":
        resume = "rayalign run PIPELINE.yaml  (the pipeline this run_dir came from; finished stages are skipped)"
    return RunStatus(
        run_dir=run_dir,
        state=state,
        stages=stages,
        updated=summary.get("updated"),
        final_model=summary.get("final_model"),
        resume=resume if state != "complete" else None,
        last_error=f"{failed[-1].id}: {failed[-1].error}" if failed else None,
    )


def _counts_text(s: StageStatus) -> str:
    from rayalign.pipeline.render import headline

    if s.state == "running":
        return s.progress or "started; no progress written yet"
    return headline({"counts": s.counts, "metrics": s.metrics})


def format_status(st: RunStatus, width: int = 100) -> str:
    lines = [f"run {st.run_dir}: {st.state}" + (f" (summary updated {st.updated})" if st.updated else "")]
    w = min(max([len(s.id) for s in st.stages] + [5]), 28)
    for s in st.stages:
        took = fmt_seconds(s.seconds) if s.seconds is not None else ""
        line = f"  {s.id:<{w}.{w}} {s.stage:<9.9} {s.state:<8} {took:>6}  {_counts_text(s) if s.state != 'pending' else ''}"
        lines.append(line.rstrip()[:width])
        if s.checkpoint and s.state != "complete":
            lines.append(f"  {'':<{w}} last checkpoint: {s.checkpoint}")
        if s.state == "running" and s.quiet_s is not None and s.quiet_s > STALE_S:
            lines.append(
                f"  {'':<{w}} nothing written for {fmt_seconds(s.quiet_s)}: if its process is gone (killed, node "
                "lost), resume with the command below"
            )
    if st.last_error:
        lines.append(f"last error: {st.last_error[:2000]}")
    if st.final_model:
        lines.append(f"final model: {st.final_model}")
    if st.resume:
        lines.append(f"resume: {st.resume}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rayalign status", description="a pipeline run's state, from its folder")
    p.add_argument("run_dir", help="the pipeline's run_dir (local folder or s3://, gs:// URI)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        st = run_status(args.run_dir)
    except FileNotFoundError as e:
        print(f"rayalign status: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(st.to_json(), indent=2) + "\n" if args.json else format_status(st))
    return 0
