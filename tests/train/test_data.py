"""Rows streamed by index: a rank decodes only the row groups of its own micro-batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from train_helpers import base_config

from rayalign.train.config import TrainConfig
from rayalign.train.data import DataOrder, RowSource
from rayalign.train.launcher import launch
from rayalign.train.metrics import read_metrics


def _copies(src: str, dst: Path, times: int) -> str:
    """A prepared dataset made of `times` copies of `src`'s shards (same rows, times as many)."""
    (dst / "data").mkdir(parents=True)
    files = sorted((Path(src) / "data").glob("shard-*.parquet"))
    n = 0
    for _ in range(times):
        for f in files:
            shutil.copy(f, dst / "data" / f"shard-{n:05d}.parquet")
            n += 1
    shutil.copy(Path(src) / "manifest.json", dst / "manifest.json")
    return str(dst)


def test_row_source_reads_only_the_groups_asked_for(tmp_path):
    """3 files × 2 row groups of 5 rows: row 12 lives in file 1, group 0 → 5 rows decoded."""
    (tmp_path / "data").mkdir()
    for f in range(3):
        t = pa.table({"x": list(range(f * 10, f * 10 + 10))})
        pq.write_table(t, tmp_path / "data" / f"shard-{f:05d}.parquet", row_group_size=5)
    src = RowSource(str(tmp_path), cache_groups=1)
    assert len(src) == 30 and src.columns == ["x"] and src.stats.rows_read == 0  # footers only
    assert [r["x"] for r in src.rows([12, 14, 10])] == [12, 14, 10]
    assert (src.stats.rows_read, src.stats.groups_read) == (5, 1)
    assert [r["x"] for r in src.rows([29, 0])] == [29, 0]
    assert (src.stats.rows_read, src.stats.groups_read) == (15, 3)
    with pytest.raises(IndexError, match="outside the dataset's 30 rows"):
        src.rows([30])


def test_data_order_is_a_pure_function_of_seed_epoch_step_rank():
    a = DataOrder(40, 2, 2, world=2, rank=1, seed=3)
    b = DataOrder(40, 2, 2, world=2, rank=1, seed=3)
    assert [a.step_rows(s) for s in (7, 0, 9)] == [b.step_rows(s) for s in (7, 0, 9)]
    rank0 = DataOrder(40, 2, 2, world=2, rank=0, seed=3)
    both = {i for s in range(5) for r in (a, rank0) for g in r.step_rows(s) for i in g}
    assert both == set(range(40))  # one epoch: every row exactly once across ranks


def test_training_memory_for_data_does_not_grow_with_the_corpus(tmp_path, chat_packed):
    """The same 3 steps on a 1× and a 20× copy: identical losses and identical rows decoded."""
    one = _copies(chat_packed, tmp_path / "x1", 1)
    twenty = _copies(chat_packed, tmp_path / "x20", 20)
    runs = {}
    for name, data in (("x1", one), ("x20", twenty)):
        cfg = base_config(
            tmp_path / f"run-{name}", data, max_steps=3, data={"shuffle": False}, checkpoint={"export": False}
        )
        runs[name] = launch(TrainConfig.model_validate(cfg))
    d1, d20 = runs["x1"].details["data"], runs["x20"].details["data"]
    assert d20["dataset_rows"] == 20 * d1["dataset_rows"]
    assert d20["rows_read"] == d1["rows_read"] and d20["bytes_read"] == d1["bytes_read"]
    assert d20["rows_read"] <= d1["dataset_rows"]  # at most the first copy's groups
    a = [r["loss"] for r in read_metrics(tmp_path / "run-x1")]
    assert [r["loss"] for r in read_metrics(tmp_path / "run-x20")] == pytest.approx(a, abs=1e-6)

    # shuffled over the 20× corpus, 3 steps of 2 rows decode at most 6 groups, not the corpus
    cfg = base_config(tmp_path / "shuffled", twenty, max_steps=3, checkpoint={"export": False})
    shuffled = launch(TrainConfig.model_validate(cfg)).details["data"]
    group_rows = max(
        pq.ParquetFile(f).metadata.row_group(0).num_rows for f in sorted((Path(twenty) / "data").glob("*.parquet"))
    )
    assert shuffled["groups_read"] <= 6 and shuffled["rows_read"] <= 6 * group_rows
    assert shuffled["rows_read"] < d20["dataset_rows"]
