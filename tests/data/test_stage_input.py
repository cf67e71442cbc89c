"""Linear stage input: every byte of a JSONL file is read about once, whatever the shard size.

Bytes are counted by a thin wrapper around the files the readers open (not by time), for the
same file prepared at two shard sizes; both runs must give the same rows, each exactly once.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from counting import counting_open_input  # tests/data/counting.py
from hypothesis import given, settings
from hypothesis import strategies as st

from rayalign import storage
from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.readers import iter_lines, read_range
from rayalign.data.shards import plan_shards


@pytest.fixture
def counted():
    with counting_open_input() as counter:
        yield counter


def write_prompts(path: Path, n: int) -> int:
    rows = [{"id": f"p{i}", "prompt": f"Question {i}: " + "why " * (i % 37)} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path.stat().st_size


@pytest.mark.parametrize("shard_rows", [64, 1024])
def test_prepare_reads_each_byte_about_once(shard_rows, tmp_path, counted):
    src = tmp_path / "prompts.jsonl"
    size = write_prompts(src, 3000)
    out = tmp_path / f"out{shard_rows}"
    result = run_prepare(
        PrepareConfig(
            kind="prompts",
            inputs=[str(src)],
            output=str(out),
            model="tiny-random:llama",
            pool={"workers": 0, "shard_rows": shard_rows},
        ),
        log=lambda s: None,
    )
    assert result.counts.in_ == result.counts.ok == 3000
    assert size <= counted.total <= 1.1 * size, (counted.total, size)
    ids = [r["id"] for r in pq.read_table(out / "data").to_pylist()]
    assert ids == [f"p{i}" for i in range(3000)]  # every row once, in file order
    shards = json.loads((out / "manifest.json").read_text())["shards"]
    assert len(shards) >= 3000 // shard_rows - 1


def test_limit_reads_only_the_rows_it_keeps(tmp_path, counted):
    src = tmp_path / "prompts.jsonl"
    size = write_prompts(src, 3000)
    lines = src.read_bytes().split(b"\n")
    plan = plan_shards([str(src)], 40, limit=100)
    assert [(s.start, s.stop, s.rows) for s in plan] == [
        (0, sum(len(x) + 1 for x in lines[:40]), 40),
        (sum(len(x) + 1 for x in lines[:40]), sum(len(x) + 1 for x in lines[:80]), 40),
        (sum(len(x) + 1 for x in lines[:80]), sum(len(x) + 1 for x in lines[:100]), 20),
    ]
    assert counted.total < size / 10


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=0, max_size=30),
    trailing_newline=st.booleans(),
    cuts=st.lists(st.integers(0, 1500), max_size=8),
)
def test_byte_ranges_give_every_line_to_exactly_one_shard(lengths, trailing_newline, cuts):
    data = b"\n".join(bytes([97 + i % 26]) * n for i, n in enumerate(lengths)) + (b"\n" if trailing_newline else b"")
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    whole = list(iter_lines(pa.BufferReader(data), 0, None))
    parts = [x for a, b in itertools.pairwise(bounds) for x in iter_lines(pa.BufferReader(data), a, b)]
    assert parts == whole
    assert b"\n".join(line for _, line, _ in whole) + (b"\n" if whole and whole[-1][2] else b"") == data


def test_parquet_shards_are_whole_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(1000)], "text": ["t"] * 1000}), path, row_group_size=100)
    plan = plan_shards([str(path)], 250)
    assert [(s.start, s.stop) for s in plan] == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    rows = [r.value["id"] for s in plan for r in read_range(s.path, s.fmt, s.start, s.stop)]
    assert rows == [f"r{i}" for i in range(1000)]
    assert [(s.start, s.stop) for s in plan_shards([str(path)], 250, limit=450)] == [(0, 300), (300, 450)]


@pytest.mark.timeout(120)
def test_object_storage_input_matches_local(tmp_path, s3_bucket):
    src = tmp_path / "prompts.jsonl"
    write_prompts(src, 300)
    storage.write_bytes(f"{s3_bucket}/in/prompts.jsonl", src.read_bytes())
    kw = dict(kind="prompts", model="tiny-random:llama", pool={"workers": 0, "shard_rows": 50})
    local = run_prepare(PrepareConfig(inputs=[str(src)], output=str(tmp_path / "l"), **kw), log=lambda s: None)
    remote = run_prepare(
        PrepareConfig(inputs=[f"{s3_bucket}/in/"], output=str(tmp_path / "r"), **kw), log=lambda s: None
    )
    assert remote.counts == local.counts
    assert pq.read_table(tmp_path / "r" / "data").to_pylist() == pq.read_table(tmp_path / "l" / "data").to_pylist()
