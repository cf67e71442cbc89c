"""Running shards: read → validate → process → write each one, in-process or on a Ray Data actor
pool, and `run_sharded`, which plans, runs the pending shards and commits the manifest.

No row can fail a shard: a row that cannot be decoded, validated, processed or written is
quarantined with its reason. An actor that dies mid-shard is restarted and its shard retried; the
retry overwrites the same files and its marker comes last, so no row is lost or doubled.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa

from rayalign import storage
from rayalign.data.formats import check_columns, normalise
from rayalign.data.readers import RawRow, columns, read_range
from rayalign.data.schemas import QUARANTINE_SCHEMA
from rayalign.data.shards.commit import (
    PLAN,
    _done_reports,
    _prepare_output,
    _upload_shard,
    _write_atomic,
    commit_manifest,
    commit_shard,
    quarantine_row,
    summarise,
)
from rayalign.data.shards.plan import PoolConfig, Shard, plan_shards, resolve_in_flight
from rayalign.results import Manifest, ShardReport


@dataclass
class ProcessResult:
    rows: list[dict]
    quarantine: list[dict] = field(default_factory=list)  # rows the processor itself rejected
    stats: dict[str, float] = field(default_factory=dict)  # summed across shards into the manifest


class Processor(Protocol):
    output_schema: pa.Schema | None

    def process(self, rows: list[dict]) -> ProcessResult: ...


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


def process_shard(shard: Shard, kind: str | None, processor: Processor, out_dir: str) -> ShardReport:
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
    return ShardReport(
        shard=shard.name,
        source=shard.path,
        start=shard.start,
        stop=shard.stop,
        in_=n_in,
        ok=n_in - sum(counts.values()),
        quarantined=sum(counts.values()),
        out_rows=table.num_rows,
        reasons=dict(counts),
        stats=dict(result.stats),
    )


def run_shard(shard: Shard, kind: str | None, processor: Processor, out_dir: str, config_hash: str) -> ShardReport:
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
    commit_shard(out_dir, report, config_hash)
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
            report = run_shard(shard, self.kind, self.processor, self.out_dir, self.config_hash)
            reports.append(json.dumps(report.to_json()))
        return {"report": reports}


def _limit_threads() -> None:
    # One torch thread per actor: two threads per actor under contention were up to 20x slower.
    try:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("RAYALIGN_TORCH_THREADS", "1"))))
    except ImportError:
        pass


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
    actor_options: Callable[[], dict[str, Any]] | None = None,
) -> Manifest:
    """Run a sharded stage to completion (resuming if possible); return its committed manifest.

    `out_dir` and `inputs` may be local paths or URIs; `extra` adds top-level manifest fields.
    `shards_in_flight` is the stage's default for `pool.shards_in_flight`, given only by stages
    whose processor's `process` is safe to call from several threads at once; None = one shard per
    actor at a time, whatever the pool says. `capacity` is how many rows the stage's engine runs at
    once and `depth` how many times that the shards in flight hold, which "auto" sizes them from
    (`auto_in_flight`). `actor_options` (called once per actor) replaces the pool's resources with
    the actor's own Ray options, e.g. a placement group for a tensor-parallel engine
    (`rayalign.placement.tp_actor_options`).
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
    reports = _execute(pending, kind, factory, out_dir, pool, config_hash, in_flight, actor_options)
    for i, report in enumerate(reports, start=1):
        done[report.shard] = report
        rows_run += report.in_
        rate = rows_run / max(time.time() - t0, 1e-9)
        log(
            f"[{stage}] shard {report.shard} done ({i}/{len(pending)}): {report.ok} ok, "
            f"{report.quarantined} quarantined; {rate:.1f} rows/s"
        )
    manifest = summarise(stage, [done[s.name] for s in shards], config_hash, extra)
    commit_manifest(out_dir, manifest)  # the commit marker: last
    return manifest


def _execute(
    pending: list[Shard],
    kind,
    factory,
    out_dir: str,
    pool: PoolConfig,
    config_hash: str,
    in_flight: int = 1,
    actor_options: Callable[[], dict[str, Any]] | None = None,
):
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
        num_gpus=0 if actor_options else pool.num_gpus,
        resources=dict(pool.resources) or None,
        ray_remote_args_fn=actor_options,
    )
    for row in ds.iter_rows():
        yield ShardReport.model_validate(json.loads(row["report"]))


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
