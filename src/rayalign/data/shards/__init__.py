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

Three modules: `plan` (shards from the input files, the pool's size), `commit` (what lands in the
output folder and in what order; reading committed outputs back) and `execute` (processing shards
in-process or on a Ray Data actor pool; `run_sharded`). This package's names below are the API
stages use.
"""

from rayalign.data.shards.commit import (
    MANIFEST,
    PLAN,
    PROGRESS,
    commit_manifest,
    dataset_files,
    finished_shards,
    manifest_counts,
    quarantine_row,
    read_dataset,
    read_manifest,
    summarise,
)
from rayalign.data.shards.execute import Processor, ProcessResult, process_shard, run_shard, run_sharded
from rayalign.data.shards.plan import (
    MAX_AUTO_IN_FLIGHT,
    PoolConfig,
    Shard,
    auto_in_flight,
    plan_shards,
    resolve_in_flight,
)

__all__ = [
    "MANIFEST",
    "MAX_AUTO_IN_FLIGHT",
    "PLAN",
    "PROGRESS",
    "PoolConfig",
    "ProcessResult",
    "Processor",
    "Shard",
    "auto_in_flight",
    "commit_manifest",
    "dataset_files",
    "finished_shards",
    "manifest_counts",
    "plan_shards",
    "process_shard",
    "quarantine_row",
    "read_dataset",
    "read_manifest",
    "resolve_in_flight",
    "run_shard",
    "run_sharded",
    "summarise",
]
