"""Committing a shard and a stage's output, and reading committed outputs back.

Object stores cannot rename or append, so a shard is committed in order: its parquet files
(``quarantine/shard-N.parquet``, then ``data/shard-N.parquet``) first, then its small marker
``_progress/shard-N.json`` (the shard's `ShardReport` plus the config hash), and ``manifest.json``
(a `results.Manifest`) once every shard is done. Anything without its marker is absent.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rayalign import storage
from rayalign.data.shards.plan import Shard
from rayalign.results import MANIFEST, Counts, Manifest, ShardReport

PROGRESS = "_progress"  # one marker per finished shard: objects cannot be appended to
PLAN = "_plan.json"  # shard and row totals of the current plan (progress displays read it)


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


def _marker(out_dir: str, name: str) -> str:
    return storage.join(out_dir, PROGRESS, f"{name}.json")


def _upload_shard(local_dir: str, out_dir: str, name: str) -> None:
    """Copy a shard staged on local disk to the output URI: quarantine first, data second."""
    for sub in ("quarantine", "data"):
        local = Path(local_dir, sub, f"{name}.parquet")
        if local.exists():
            with storage.open_output(storage.join(out_dir, sub, local.name)) as out, open(local, "rb") as fh:
                shutil.copyfileobj(fh, out, length=8 << 20)


def commit_shard(out_dir: str, report: ShardReport, config_hash: str) -> None:
    """The shard's marker, written once its data files are in place: the shard is done."""
    storage.write_json(_marker(out_dir, report.shard), {"config_hash": config_hash, "report": report.to_json()})


def commit_manifest(out_dir: str, manifest: Manifest) -> None:
    """Write `manifest.json`, the stage's commit marker (once every shard is committed; atomic)."""
    storage.write_json(storage.join(out_dir, MANIFEST), manifest.to_json())


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


def _done_reports(out_dir: str, shards: list[Shard], config_hash: str) -> tuple[dict[str, ShardReport], bool]:
    """Reports of the planned shards whose marker and data are committed, and whether markers of
    another config were found (the folder then belongs to a different run and is recomputed)."""
    planned = {s.name: s for s in shards}
    data = {storage.basename(f) for f in storage.glob(storage.join(out_dir, "data"), "shard-*.parquet")}
    done: dict[str, ShardReport] = {}
    stale = False
    for marker in _read_markers(out_dir):
        report = marker.get("report") or {}
        shard = planned.get(report.get("shard", ""))
        if marker.get("config_hash") != config_hash:
            stale = True
        elif shard is not None and f"{shard.name}.parquet" in data and _same_rows(shard, report):
            done[shard.name] = ShardReport.model_validate(report)
    return done, stale


def _same_rows(shard: Shard, report: dict) -> bool:
    """The marker describes the rows this shard plans to read (same file, same range)."""
    planned = {"source": shard.path, "start": shard.start, "stop": shard.stop}
    return all(report.get(k, v) == v for k, v in planned.items())


def _prepare_output(stage: str, out_dir: str, config_hash: str, log: Callable[[str], None]) -> Manifest | None:
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
        return Manifest.from_json(old)
    return None


def summarise(stage: str, reports: list[ShardReport], config_hash: str, extra: dict | None = None) -> Manifest:
    """The manifest of a finished stage from its shard reports (totals must reconcile)."""
    reasons: Counter = Counter()
    stats: Counter = Counter()
    for r in reports:
        reasons.update(r.reasons)
        stats.update(r.stats)
    counts = Counts(
        in_=sum(r.in_ for r in reports),
        ok=sum(r.ok for r in reports),
        quarantined=sum(r.quarantined for r in reports),
        out_rows=sum(r.out_rows for r in reports),
        by_reason=dict(sorted(reasons.items())),
    )
    if not counts.reconciles():
        raise RuntimeError(
            f"[{stage}] counts do not reconcile: in={counts.in_} ok={counts.ok} quarantined={counts.quarantined}"
        )
    return Manifest.model_validate(
        {
            "stage": stage,
            "config_hash": config_hash,
            "complete": True,
            "counts": counts,
            "stats": dict(stats),
            "shards": reports,
            **(extra or {}),
        }
    )


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
