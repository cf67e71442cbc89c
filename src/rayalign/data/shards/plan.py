"""Shard planning: how a stage's input files are cut into shards, and how its actor pool is sized.

The plan is read from file sizes and footers alone (see `rayalign.data.readers`), so the driver never
holds the data, and it is a pure function of the files and (shard_rows, limit): a re-run finds the
same shards under the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, PositiveInt

from rayalign import storage
from rayalign.config import Cfg
from rayalign.data.readers import (
    DataError,
    arrow_plan,
    detect_format,
    expand_inputs,
    jsonl_plan,
    parquet_plan,
    read_json_doc,
)


class PoolConfig(Cfg):
    """How the actor pool is sized. The defaults never deadlock a 2-CPU local cluster.

    `workers`, `num_cpus`, `num_gpus`, `resources` and `shards_in_flight` are resources: they stay
    out of the config hash, so a resumed stage may use a different pool. `shard_rows` and `limit`
    decide which rows form which shard, so they are part of it.
    """

    resource_fields = frozenset({"workers", "num_cpus", "num_gpus", "resources", "shards_in_flight"})

    workers: int = 1  # actors in the pool; 0 = run in the driver process without Ray
    num_cpus: float = 0.5  # CPUs per actor (fractional so a 2-CPU box never deadlocks)
    num_gpus: float = 0.0  # GPUs per actor (engines that run on a GPU)
    # custom Ray resources every actor requests, e.g. {"data_node": 1} to pin the pool to nodes started
    # with `ray start --resources '{"data_node": 4}'`
    resources: dict[str, float] = Field(default_factory=dict)
    # Shards one actor (or the driver, at workers 0) works on at once, each in its own thread over
    # the one processor. "auto" (generation stages): enough shards that the engine always holds
    # more requests than it runs at once (see `auto_in_flight`), so it never drains at a shard
    # boundary; None = the stage's default (1 for stages whose processors are not thread-safe).
    shards_in_flight: PositiveInt | Literal["auto"] | None = None
    shard_rows: int = 256  # input rows per shard: the unit of work, commit and resume
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
