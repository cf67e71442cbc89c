"""The one mechanism every dataset stage runs on: shards in, parquet shards + manifest out.

A stage's input files are cut into shards (file, start, stop) — small descriptors, so the driver
never holds the data. A Ray Data actor pool processes pending shards: each actor reads its rows,
validates them (bad rows → ``quarantine/``), runs the stage's processor on the good ones and commits
the shard. The output folder may be a local path or any object-store URI (``s3://bucket/run/x``).

Object stores cannot rename or append, so a shard is committed in order: its parquet files
(``quarantine/shard-N.parquet``, then ``data/shard-N.parquet``) first, then its small marker
``_progress/shard-N.json`` (the shard's report plus the config hash), and ``manifest.json`` once every
shard is done. Anything without its marker is absent: a shard whose data landed but whose marker did
not is simply run again (same name, same rows), so a killed job resumes where it stopped and
produces every row exactly once. The manifest holds the config hash, per-shard counts and totals;
in = ok + quarantined.

Without Ray (``workers: 0``) the same code runs in-process, which is what unit tests use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, PositiveInt

from rayalign import storage
from rayalign.config import Cfg
from rayalign.data.formats import check_columns, normalise
from rayalign.data.readers import (
    DataError,
    RawRow,
    arrow_plan,
    columns,
    detect_format,
    expand_inputs,
    jsonl_plan,
    parquet_plan,
    read_json_doc,
    read_range,
)
from rayalign.data.schemas import QUARANTINE_SCHEMA
from rayalign.results import Counts, Manifest

MANIFEST = "manifest.json"
PROGRESS = "_progress"  # one marker per finished shard: objects cannot be appended to
PLAN = "_plan.json"  # shard and row totals of the current plan (progress displays read it)


class PoolConfig(Cfg):
    """How the actor pool is sized. The defaults never deadlock a 2-CPU local cluster.

    `workers`, `num_cpus`, `num_gpus`, `resources` and `shards_in_flight` are resources: they stay
    out of the config hash, so a resumed stage may use a different pool. `shard_rows` and `limit`
    decide which rows form which shard, so they are part of it.
    """

    resource_fields = frozenset({"workers", "num_cpus", "num_gpus", "resources", "shards_in_flight"})

    workers: int = 1  # actors in the pool; 0 = run in the driver process without Ray
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    # custom Ray resources every actor requests, e.g. {"data_node": 1} to pin the pool to nodes started
    # with `ray start --resources '{"data_node": 4}'`
    resources: dict[str, float] = Field(default_factory=dict)
    # Shards one actor (or the driver, at workers 0) works on at once, each in its own thread over
    # the one processor. "auto" (generation stages): enough shards that the engine always holds
    # more requests than it runs at once (see `auto_in_flight`), so it never drains at a shard
    # boundary; None = the stage's default (1 for stages whose processors are not thread-safe).
    shards_in_flight: PositiveInt | Literal["auto"] | None = None
    shard_rows: int = 256
    limit: int | None = None  # only the first N input rows (a seed sample, a smoke run); None = all


# The most shards "auto" keeps in flight per actor: each is a thread holding its rows and results.
MAX_AUTO_IN_FLIGHT = 64


def auto_in_flight(capacity: int, shard_rows: int, pending: int, depth: int = 2) -> int:
    """Shards in flight that keep an engine running `capacity` requests at once always full.

    `depth` times the capacity is held (ceil(depth * capacity / shard_rows) shards): when a shard's
    last rows finish, the others still hold more requests than the engine runs, so its batch refills
    at once instead of draining while the next shard is read and tokenised. A continuously batched
    engine takes depth 4 (`EngineConfig.queue_depth`): with long-tailed answers every shard in flight
    can be down to its one longest answer, and only rows still queued in other shards keep the batch
    full; that engine admits a shard's rows only while its own backlog is under twice its capacity,
    so the deeper queue costs rows held in memory, not a longer engine queue. At least 2, so that
    even shards larger than the engine's batch never leave it running only one shard's longest
    tail. Clamped to MAX_AUTO_IN_FLIGHT and to the shards left to run (at least 1).
    """
    want = max(2, -(-depth * max(capacity, 1) // max(shard_rows, 1)))
    return max(1, min(want, MAX_AUTO_IN_FLIGHT, pending))


def resolve_in_flight(
    setting: int | str | None,
    default: int | str | None,
    capacity: int | None,
    shard_rows: int,
    pending: int,
    depth: int = 2,
) -> tuple[int, str]:
    """(shards in flight per actor, why) from `pool.shards_in_flight` (`setting`), the stage's
    default (None: one at a time, whatever the pool says) and its engine's capacity (requests run
    at once; None: unknown, "auto" then keeps one shard in flight)."""
    if default is None:
        ignored = setting not in (None, 1)
        return 1, "this stage runs one shard at a time per actor" + (
            ": pool.shards_in_flight ignored" if ignored else ""
        )
    chosen = default if setting is None else setting
    if chosen != "auto":
        return int(chosen), "pool.shards_in_flight" if setting is not None else "the stage's default"
    if capacity is None:
        return 1, "auto, but the engine's capacity is unknown"
    n = auto_in_flight(capacity, shard_rows, pending, depth)
    return n, f"engine runs {capacity} at once, shards of {shard_rows} rows"


@dataclass
class Shard:
    """One unit of work: rows [start, stop) of a file, in the file format's own unit.

    `unit` is "bytes" for JSONL (a byte range; its rows are the lines that start inside it) and
    "rows" otherwise (stop < 0: to the end). `rows` is the number of rows when the plan knows it
    (parquet, Arrow, `limit`), -1 when only reading tells (JSONL byte ranges, JSON documents).
    """

    shard_id: int
    path: str
    fmt: str
    start: int
    stop: int
    source_name: str = ""
    unit: str = "rows"
    rows: int = -1

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"


@dataclass
class ProcessResult:
    rows: list[dict]
    quarantine: list[dict] = field(default_factory=list)  # rows the processor itself rejected
    stats: dict[str, float] = field(default_factory=dict)  # summed across shards into the manifest


class Processor(Protocol):
    output_schema: pa.Schema | None

    def process(self, rows: list[dict]) -> ProcessResult: ...


def plan_shards(inputs: list[str], shard_rows: int, limit: int | None = None) -> list[Shard]:
    """Cut the input files into shards from sizes and footers alone (see `rayalign.data.readers`).

    The plan is a pure function of the files and (shard_rows, limit): a re-run finds the same
    shards under the same names. Raises DataError when every input is empty.
    """
    shards: list[Shard] = []
    files = expand_inputs(inputs)
    left = limit
    for path in files:
        if left is not None and left <= 0:
            break
        fmt = detect_format(path)
        unit, ranges, n = _file_ranges(path, fmt, shard_rows, left)
        if left is not None:
            left -= n
        source = storage.basename(path).rsplit(".", 1)[0]
        for start, stop, rows in ranges:
            shards.append(Shard(len(shards), path, fmt, start, stop, source, unit, rows))
    if not shards and files and all(_empty(f) for f in files):
        raise DataError(f"every input file is empty ({', '.join(files[:5])}); point inputs at files with rows")
    return shards


def _file_ranges(path: str, fmt: str, shard_rows: int, limit: int | None) -> tuple[str, list, int]:
    """(unit, [(start, stop, rows)], rows planned or -1) of one file."""
    if fmt == "jsonl":
        ranges, n = jsonl_plan(path, shard_rows, limit)
        return "bytes", ranges, n
    if fmt == "json":
        if limit is None:  # one document, parsed once by the worker that reads it
            return "rows", [(0, -1, -1)], -1
        n = min(sum(1 for _ in read_json_doc(path)), limit)
        return "rows", [(s, min(s + shard_rows, n), min(s + shard_rows, n) - s) for s in range(0, n, shard_rows)], n
    ranges = parquet_plan(path, shard_rows, limit) if fmt == "parquet" else arrow_plan(path, shard_rows, limit)
    return "rows", ranges, sum(r[2] for r in ranges)


def _empty(path: str) -> bool:
    return detect_format(path) in ("jsonl", "json") and storage.file_size(path) == 0


def quarantine_row(source: str, index: int, code: str, detail: str, raw: str) -> dict:
    """One quarantine record; its strings are made storable (a lone surrogate becomes `\\ud800` text)."""
    return {
        "source": source,
        "index": int(index),
        "reason": code,
        "detail": _storable(detail),
        "raw": _storable(raw[:100_000]),
    }


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _write_atomic(table: pa.Table, target: str | Path) -> None:
    """Data first, whole or not at all (temp + rename locally, one upload on object stores)."""
    with storage.open_output(str(target)) as fh:
        pq.write_table(table, fh)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


def _read_validated(shard: Shard, kind: str | None, fmt: str) -> tuple[list[dict], list[RawRow], list[dict], int]:
    """(good rows, their raw rows, quarantine rows, rows in) of one shard."""
    good: list[dict] = []
    raws: list[RawRow] = []
    quarantined: list[dict] = []
    n_in = 0
    if kind is not None and shard.fmt in ("parquet", "arrow"):
        check_columns(shard.path, kind, columns(shard.path, shard.fmt))
    for raw in read_range(shard.path, shard.fmt, shard.start, shard.stop):
        n_in += 1
        if raw.error is not None:
            quarantined.append(quarantine_row(shard.path, raw.index, raw.error.code, raw.error.detail, raw.raw_text()))
            continue
        if kind is None:  # a stage reading its own (already validated) outputs
            good.append(raw.value)
            raws.append(raw)
            continue
        try:
            row, reason = normalise(kind, raw.value, fmt, default_id=f"{shard.source_name}-{raw.index}")
        except Exception as e:  # any fault of one row (deep nesting, odd types) is that row's reason
            quarantined.append(quarantine_row(shard.path, raw.index, "invalid_row", _error_text(e), raw.raw_text()))
            continue
        if reason is not None or row is None:
            code, detail = (reason.code, reason.detail) if reason else ("invalid_row", "no row")
            quarantined.append(quarantine_row(shard.path, raw.index, code, detail, raw.raw_text()))
            continue
        row["_index"] = raw.index
        good.append(row)
        raws.append(raw)
    return good, raws, quarantined, n_in


def _process_isolated(
    processor: Processor, rows: list[dict], top: bool = True
) -> tuple[ProcessResult, list[tuple[int, str]]]:
    """Run the processor; if it raises, bisect to the rows that make it raise.

    Returns the merged result of the parts that ran and [(position in rows, error text)] of the
    rows that fail even alone. When every row of a multi-row batch fails alone the fault is the
    processor's (a dead engine, a bad config), not the rows': it is raised, not quarantined.
    """
    try:
        return processor.process(rows), []
    except Exception as e:
        if len(rows) == 1:
            return ProcessResult([]), [(0, _error_text(e))]
        mid = len(rows) // 2
        left, fail_left = _process_isolated(processor, rows[:mid], top=False)
        right, fail_right = _process_isolated(processor, rows[mid:], top=False)
        failed = fail_left + [(mid + p, t) for p, t in fail_right]
        if top and len(failed) == len(rows):
            raise
        stats = Counter(left.stats)
        stats.update(right.stats)
        return ProcessResult(left.rows + right.rows, left.quarantine + right.quarantine, dict(stats)), failed


def _to_table(rows: list[dict], schema: pa.Schema | None) -> tuple[pa.Table, list[tuple[int, str]]]:
    """The output table, leaving out rows Arrow cannot encode: [(position, error text)] of those."""
    if not rows and schema is None:
        return pa.table({}), []
    try:
        return pa.Table.from_pylist(rows, schema=schema), []
    except Exception:
        keep, bad = [], []
        for pos, r in enumerate(rows):
            try:
                pa.Table.from_pylist([r], schema=schema)
                keep.append(r)
            except Exception as e:
                bad.append((pos, _error_text(e)))
        if not keep and schema is None:
            return pa.table({}), bad
        return pa.Table.from_pylist(keep, schema=schema), bad


def process_shard(shard: Shard, kind: str | None, processor: Processor, out_dir: str) -> dict:
    """Read → validate → process → write one shard. Returns its counts for the manifest.

    No row can fail the shard: a row that cannot be decoded, validated, processed or written is
    quarantined with its reason and the exception text (`processing_error`, `unwritable_row`).
    The processor may name its input format (`input_format`, default auto-detection per row).
    """
    good, raws, quarantined, n_in = _read_validated(shard, kind, getattr(processor, "input_format", "auto"))
    result, failed = _process_isolated(processor, good) if good else (ProcessResult([]), [])
    for pos, text in failed:
        quarantined.append(quarantine_row(shard.path, raws[pos].index, "processing_error", text, raws[pos].raw_text()))
    quarantined.extend(result.quarantine)
    rows = [{k: v for k, v in r.items() if k != "_index"} for r in result.rows]
    table, unwritable = _to_table(rows, getattr(processor, "output_schema", None))
    for pos, text in unwritable:  # `_index` names the input row where the processor kept it
        r = result.rows[pos]
        quarantined.append(
            quarantine_row(
                shard.path,
                int(r.get("_index", -1)),
                "unwritable_row",
                text,
                json.dumps(r, ensure_ascii=True, default=str),
            )
        )
    # quarantine first: a shard counts as done only once its data file exists
    if quarantined:
        _write_atomic(
            pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA),
            storage.join(out_dir, "quarantine", f"{shard.name}.parquet"),
        )
    _write_atomic(table, storage.join(out_dir, "data", f"{shard.name}.parquet"))
    counts = Counter(q["reason"] for q in quarantined)
    return {
        "shard": shard.name,
        "source": shard.path,
        "start": shard.start,
        "stop": shard.stop,
        "in": n_in,
        "ok": n_in - sum(counts.values()),
        "quarantined": sum(counts.values()),
        "out_rows": table.num_rows,
        "reasons": dict(counts),
        "stats": dict(result.stats),
    }


def _marker(out_dir: str, name: str) -> str:
    return storage.join(out_dir, PROGRESS, f"{name}.json")


def _upload_shard(local_dir: str, out_dir: str, name: str) -> None:
    """Copy a shard staged on local disk to the output URI: quarantine first, data second."""
    for sub in ("quarantine", "data"):
        local = Path(local_dir, sub, f"{name}.parquet")
        if local.exists():
            with storage.open_output(storage.join(out_dir, sub, local.name)) as out, open(local, "rb") as fh:
                shutil.copyfileobj(fh, out, length=8 << 20)


def run_shard(shard: Shard, kind: str | None, processor: Processor, out_dir: str, config_hash: str) -> dict:
    """Process one shard and commit it: its parquet files first, its marker last. Returns its report.

    On an object store the shard is written to a node-local staging folder and uploaded (one PUT per
    file), so the processing code only ever writes local files.
    """
    if storage.is_uri(out_dir):
        with tempfile.TemporaryDirectory(prefix="rayalign-shard-") as tmp:
            report = process_shard(shard, kind, processor, tmp)
            _upload_shard(tmp, out_dir, shard.name)
    else:
        report = process_shard(shard, kind, processor, out_dir)
    storage.write_json(_marker(out_dir, shard.name), {"config_hash": config_hash, "report": report})
    return report


class _ShardActor:
    """Ray Data actor: builds the processor once (model, tokenizer, engine), then runs shards."""

    def __init__(self, kind: str | None, factory: Callable[[], Processor], out_dir: str, config_hash: str):
        _limit_threads()
        self.kind, self.out_dir, self.config_hash = kind, out_dir, config_hash
        self.processor = factory()

    def __call__(self, batch: dict) -> dict:
        reports = []
        for item in batch["shard"]:
            shard = Shard(**json.loads(item))
            reports.append(json.dumps(run_shard(shard, self.kind, self.processor, self.out_dir, self.config_hash)))
        return {"report": reports}


def _limit_threads() -> None:
    # One torch thread per actor: two threads per actor under contention were up to 20x slower.
    try:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("RAYALIGN_TORCH_THREADS", "1"))))
    except ImportError:
        pass


def read_manifest(out_dir: str | Path) -> dict | None:
    """The committed manifest of a stage's output folder (local or URI) as JSON, or None if absent.

    Read as written (manifests of datasets made by other tools may carry only some fields); the
    runner writes them through `results.Manifest`.
    """
    data = storage.read_json(storage.join(str(out_dir), MANIFEST))
    return data if isinstance(data, dict) else None


def manifest_counts(manifest: dict | Manifest) -> Counts:
    """The typed row accounting of a manifest (for `StageResult.counts`)."""
    if isinstance(manifest, Manifest):
        return manifest.counts
    return Counts.model_validate(manifest["counts"])


def finished_shards(out_dir: str | Path) -> list[str]:
    """Names of the shards whose marker is committed (progress of a running or killed stage)."""
    return [
        storage.basename(f)[: -len(".json")] for f in storage.glob(storage.join(str(out_dir), PROGRESS), "shard-*.json")
    ]


def _read_markers(out_dir: str) -> list[dict]:
    files = storage.glob(storage.join(out_dir, PROGRESS), "shard-*.json")
    if not storage.is_uri(out_dir):
        return [m for m in map(storage.read_json, files) if m]
    with ThreadPoolExecutor(16) as ex:  # one GET per shard: overlap the round trips
        return [m for m in ex.map(storage.read_json, files) if m]


def _done_reports(out_dir: str, shards: list[Shard], config_hash: str) -> tuple[dict[str, dict], bool]:
    """Reports of the planned shards whose marker and data are committed, and whether markers of
    another config were found (the folder then belongs to a different run and is recomputed)."""
    planned = {s.name: s for s in shards}
    data = {storage.basename(f) for f in storage.glob(storage.join(out_dir, "data"), "shard-*.parquet")}
    done: dict[str, dict] = {}
    stale = False
    for marker in _read_markers(out_dir):
        report = marker.get("report") or {}
        shard = planned.get(report.get("shard", ""))
        if marker.get("config_hash") != config_hash:
            stale = True
        elif shard is not None and f"{shard.name}.parquet" in data and _same_rows(shard, report):
            done[shard.name] = report
    return done, stale


def _same_rows(shard: Shard, report: dict) -> bool:
    """The marker describes the rows this shard plans to read (same file, same range)."""
    planned = {"source": shard.path, "start": shard.start, "stop": shard.stop}
    return all(report.get(k, v) == v for k, v in planned.items())


def _prepare_output(stage: str, out_dir: str, config_hash: str, log: Callable[[str], None]) -> dict | None:
    """Return the manifest if the stage is already complete with this config; wipe the folder if it
    holds another config's output (manifest or shard markers)."""
    old = read_manifest(out_dir)
    stale = old is not None and old.get("config_hash") != config_hash
    if old is None:
        stale = any(m.get("config_hash") != config_hash for m in _read_markers(out_dir))
    if stale:
        log(f"[{stage}] config changed since the last run: recomputing {out_dir}")
        storage.remove_tree(out_dir)
        return None
    if old and old.get("complete"):
        log(f"[{stage}] already complete in {out_dir} (config {config_hash}); skipping")
        return old
    return None


def run_sharded(
    stage: str,
    inputs: list[str],
    out_dir: str,
    factory: Callable[[], Processor],
    *,
    kind: str | None,
    pool: PoolConfig,
    config_hash: str,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    shards_in_flight: int | Literal["auto"] | None = None,
    capacity: int | None = None,
    depth: int = 2,
) -> dict:
    """Run a sharded stage to completion (resuming if possible); return the manifest (JSON form).

    `out_dir` and `inputs` may be local paths or URIs. `manifest_counts(result)` gives the typed counts.
    `shards_in_flight` is the stage's default for `pool.shards_in_flight`, given only by stages
    whose processor's `process` is safe to call from several threads at once; None = one shard per
    actor at a time, whatever the pool says. `capacity` is how many rows the stage's engine runs at
    once and `depth` how many times that the shards in flight hold, which "auto" sizes them from
    (`auto_in_flight`).
    """
    out_dir = str(out_dir)
    done_manifest = _prepare_output(stage, out_dir, config_hash, log)
    if done_manifest is not None:
        return done_manifest
    storage.makedirs(out_dir)
    shards = plan_shards(inputs, pool.shard_rows, pool.limit)
    done, _ = _done_reports(out_dir, shards, config_hash)
    pending = [s for s in shards if s.name not in done]
    # JSONL shards are byte ranges: their row counts are known only once read
    known = all(s.rows >= 0 for s in shards)
    total_rows = sum(s.rows for s in shards) if known else None
    storage.write_json(storage.join(out_dir, PLAN), {"shards": len(shards), "rows": total_rows})
    size = f"{total_rows} row(s)" if known else "rows counted as read"
    log(f"[{stage}] {len(shards)} shard(s), {size}; {len(done)} done, {len(pending)} to run")
    t0, rows_run = time.time(), 0
    in_flight, why = resolve_in_flight(
        pool.shards_in_flight, shards_in_flight, capacity, pool.shard_rows, len(pending), depth
    )
    if pending and (in_flight > 1 or pool.shards_in_flight not in (None, 1) or shards_in_flight is not None):
        log(f"[{stage}] {in_flight} shard(s) in flight per actor: {why}")
    reports = _execute(pending, kind, factory, out_dir, pool, config_hash, in_flight)
    for i, report in enumerate(reports, start=1):
        done[report["shard"]] = report
        rows_run += report["in"]
        rate = rows_run / max(time.time() - t0, 1e-9)
        log(
            f"[{stage}] shard {report['shard']} done ({i}/{len(pending)}): {report['ok']} ok, "
            f"{report['quarantined']} quarantined; {rate:.1f} rows/s"
        )
    manifest = summarise(stage, [done[s.name] for s in shards], config_hash, extra)
    storage.write_json(storage.join(out_dir, MANIFEST), manifest)  # the commit marker: last
    return manifest


def summarise(stage: str, reports: list[dict], config_hash: str, extra: dict | None = None) -> dict:
    """The manifest of a finished stage (validated as `results.Manifest`) from its shard reports."""
    reasons: Counter = Counter()
    stats: Counter = Counter()
    for r in reports:
        reasons.update(r["reasons"])
        stats.update(r.get("stats", {}))
    counts = Counts.model_validate(
        {
            "in": sum(r["in"] for r in reports),
            "ok": sum(r["ok"] for r in reports),
            "quarantined": sum(r["quarantined"] for r in reports),
            "out_rows": sum(r["out_rows"] for r in reports),
            "by_reason": dict(sorted(reasons.items())),
        }
    )
    if not counts.reconciles():
        raise RuntimeError(
            f"[{stage}] counts do not reconcile: in={counts.in_} ok={counts.ok} quarantined={counts.quarantined}"
        )
    manifest = Manifest.model_validate(
        {
            "stage": stage,
            "config_hash": config_hash,
            "complete": True,
            "counts": counts.to_json(),
            "stats": dict(stats),
            "shards": reports,
            **(extra or {}),
        }
    )
    return manifest.to_json()


def _execute(pending: list[Shard], kind, factory, out_dir: str, pool: PoolConfig, config_hash: str, in_flight: int = 1):
    """Yield the reports of `pending` shards as they finish (in-process or on a Ray Data actor pool).

    With `in_flight` > 1 each actor (or the driver) runs that many shards at once in threads over
    its one processor; every shard still commits on its own (data, then marker), so the order
    shards finish in changes nothing on disk. An actor that dies mid-shard (OOM killer, preempted
    node, `kill -9`) is restarted and its shards retried (Ray Data's actor pools default to unlimited
    actor restarts and task retries; we keep them): a retry overwrites the same files and the marker
    comes last, so no row is lost or doubled.
    """
    if not pending:
        return
    if pool.workers <= 0:
        yield from _execute_here(pending, kind, factory, out_dir, config_hash, in_flight)
        return
    import ray

    from rayalign.raycluster import ensure_ray

    ensure_ray()
    items = [{"shard": json.dumps(s.__dict__)} for s in pending]
    source = ray.data.from_items(items, override_num_blocks=len(items))
    size = min(pool.workers, len(pending))
    if in_flight > 1:
        # Threaded actors: `in_flight` calls (one shard each) run at once; no more are queued at an
        # actor than it runs, so a slow actor never hoards shards a free one could take.
        compute = ray.data.ActorPoolStrategy(
            size=size,
            max_concurrent_calls_per_actor=in_flight,
            max_tasks_in_flight_per_actor=in_flight,
            enable_true_multi_threading=True,
        )
    else:
        compute = ray.data.ActorPoolStrategy(size=size)
    ds = source.map_batches(
        _ShardActor,
        fn_constructor_kwargs={"kind": kind, "factory": factory, "out_dir": out_dir, "config_hash": config_hash},
        batch_size=1,
        compute=compute,
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        resources=dict(pool.resources) or None,
    )
    for row in ds.iter_rows():
        yield json.loads(row["report"])


def _execute_here(pending: list[Shard], kind, factory, out_dir: str, config_hash: str, in_flight: int):
    """The in-process runner: one processor, `in_flight` shards at a time in threads. A shard that
    raises stops the run (as it does sequentially): queued shards are cancelled, running ones end."""
    processor = factory()
    if in_flight <= 1:
        for s in pending:
            yield run_shard(s, kind, processor, out_dir, config_hash)
        return
    ex = ThreadPoolExecutor(in_flight, thread_name_prefix="shard")
    try:
        futures = [ex.submit(run_shard, s, kind, processor, out_dir, config_hash) for s in pending]
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def dataset_files(out_dir: str | Path) -> list[str]:
    """The data shards of a stage's output folder (local or URI), in shard order.

    A committed folder lists exactly the shards its manifest names; a folder without a manifest (a
    dataset written by other tools in this layout) lists every `data/shard-*.parquet`.
    """
    out = str(out_dir)
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("shards"):
        return [storage.join(out, "data", f"{s['shard']}.parquet") for s in manifest["shards"]]
    return storage.glob(storage.join(out, "data"), "shard-*.parquet")


def _read_parquet(path: str, columns: list[str] | None) -> pa.Table:
    fs, inner = storage.filesystem(path)
    return storage.retrying(path, lambda: pq.read_table(inner, filesystem=fs, columns=columns))


def read_dataset(out_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All data shards of a finished stage (local or URI), in shard order."""
    files = dataset_files(out_dir)
    if not files:
        raise FileNotFoundError(f"{out_dir} holds no data shards; run the stage that writes it first")
    with ThreadPoolExecutor(8 if storage.is_uri(str(out_dir)) else 1) as ex:
        tables = [t for t in ex.map(lambda f: _read_parquet(f, columns), files) if t.num_columns]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
