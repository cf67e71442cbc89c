"""File-level faults get a clear error or are handled; row faults inside a processor are isolated."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.readers import DataError
from rayalign.data.shards import ProcessResult, Shard, plan_shards, process_shard

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def prepare(tmp_path: Path, src: Path, kind: str = "chat"):
    return run_prepare(
        PrepareConfig(
            kind=kind,
            inputs=[str(src)],
            output=str(tmp_path / "out"),
            model="tiny-random:llama",
            pack=False,
            pool={"workers": 0},
        ),
        log=lambda s: None,
    )


def test_windows_export_and_real_world_rows(tmp_path):
    """BOM + CRLF are accepted; text-only content parts are joined; the rest get their own reasons."""
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo."}]},
        ]
    }
    image = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "A cat."},
        ]
    }
    lines = [
        json.dumps({"id": "bom", **CHAT}),
        json.dumps({"id": "parts", **parts}),
        json.dumps({"id": "img", **image}),
        '{"id": "dup", "id": "again", "messages": []}',
        '{"id": "nan", "score": NaN, "messages": []}',
        '{"id": "big", "score": 1e999, "messages": []}',
        '{"id": "deep", "messages": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"id": "lone", "messages": [{"role": "user", "content": "\\udc00"}]}',
    ]
    src = tmp_path / "win.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(x.encode() for x in lines) + b"\r\n" + b'{"id": "cut", "mess')
    result = prepare(tmp_path, src)
    assert result.counts.in_ == 9 and result.counts.ok == 2
    assert result.counts.by_reason == {
        "non_text_content": 1,
        "duplicate_key": 1,
        "non_finite_number": 2,
        "too_deep": 1,
        "invalid_unicode": 1,
        "truncated_line": 1,
    }
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert [r["doc_ids"] for r in rows] == [["bom"], ["parts"]]
    assert rows[0]["input_ids"][:-1] != rows[1]["input_ids"][:-1]  # "Hel"+"lo." joined by a newline
    q = {r["reason"]: r for r in pq.read_table(tmp_path / "out" / "quarantine").to_pylist()}
    assert "image_url" in q["non_text_content"]["detail"]
    assert "'id'" in q["duplicate_key"]["detail"]


def test_empty_inputs_name_the_files(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"a\.jsonl.*point inputs at files with rows"):
        plan_shards([str(tmp_path / "a.jsonl")], 10)


def test_unreadable_parquet_names_the_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken\.parquet: not a readable parquet file"):
        plan_shards([str(bad)], 10)


def test_wrong_parquet_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"id": ["a"], "score": [1.0]}), path)
    with pytest.raises(DataError, match=r"scores\.parquet: its columns \(id, score\) hold no chat rows"):
        prepare(tmp_path, path)


class Picky:
    """Raises on any batch holding a row whose text says 'boom'; emits a lone surrogate for 'ghost'."""

    output_schema = pa.schema([("id", pa.string()), ("text", pa.string())])

    def __init__(self):
        self.calls = 0

    def process(self, rows):
        self.calls += 1
        if any("boom" in r["text"] for r in rows):
            raise RuntimeError("kaboom on a row")
        return ProcessResult(
            [
                {"id": r["id"], "text": "\ud800" if r["text"] == "ghost" else r["text"], "_index": r["_index"]}
                for r in rows
            ],
            [],
            {"n": len(rows)},
        )


def test_processing_errors_are_isolated_to_their_rows(tmp_path):
    texts = ["a", "boom 1", "b", "c", "ghost", "d", "boom 2", "e"]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    (shard,) = plan_shards([str(src)], 100)
    report = process_shard(shard, "corpus", Picky(), str(tmp_path / "out"))
    assert report.in_ == 8 and report.ok == 5 and report.quarantined == 3
    assert report.reasons == {"processing_error": 2, "unwritable_row": 1}
    assert report.stats == {"n": 6}  # the parts that ran, summed
    ids = [r["id"] for r in pq.read_table(tmp_path / "out" / "data").to_pylist()]
    assert ids == ["r0", "r2", "r3", "r5", "r7"]
    q = pq.read_table(tmp_path / "out" / "quarantine").to_pylist()
    assert sorted((r["reason"], json.loads(r["raw"])["id"]) for r in q) == [
        ("processing_error", "r1"),
        ("processing_error", "r6"),
        ("unwritable_row", "r4"),
    ]
    assert all("RuntimeError: kaboom on a row" in r["detail"] for r in q if r["reason"] == "processing_error")


def test_a_processor_failing_on_every_row_fails_the_shard(tmp_path):
    """A dead engine is not the rows' fault: nothing is quarantined, the error surfaces."""
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"boom {i}"}) + "\n" for i in range(4)))
    with pytest.raises(RuntimeError, match="kaboom"):
        process_shard(Shard(0, str(src), "jsonl", 0, 10**6, "c", "bytes"), "corpus", Picky(), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "data").exists()


def test_json_array_bad_elements_fail_alone(tmp_path):
    """In a JSON document, NaN or a duplicate key in one element quarantines that element only."""
    good = json.dumps({"id": "ok", "text": "fine"})
    src = tmp_path / "docs.json"
    src.write_text(
        "["
        + ", ".join(
            [
                good,
                '{"id": "nan", "text": "x", "s": NaN}',
                '{"id": "d", "id": "e", "text": "y"}',
                '{"id": "lone", "text": "\\ud800"}',
                '{"id": "big", "text": "z", "s": [1e999]}',
            ]
        )
        + "]"
    )
    result = prepare(tmp_path, src, kind="corpus")
    assert result.counts.in_ == 5 and result.counts.ok == 1
    assert result.counts.by_reason == {"non_finite_number": 2, "duplicate_key": 1, "invalid_unicode": 1}


def test_stage_output_folder_as_input_reads_its_data_only(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"id": "a", **CHAT}) + "\n" + json.dumps({"id": "b", "messages": []}) + "\n")
    prepare(tmp_path, src)  # writes out/data and out/quarantine
    shards = plan_shards([str(tmp_path / "out")], 10)
    assert [Path(s.path).parent.name for s in shards] == ["data"]


def test_hostile_parquet_values(tmp_path):
    """Typed columns carry their own hostile values: nulls, empty, control characters, megabytes."""
    path = tmp_path / "t.parquet"
    texts = [None, "", "ok", "\x00\x1f ctl", "w " * 300_000, "fine"]
    pq.write_table(
        pa.table(
            {"id": [f"r{i}" for i in range(6)], "text": texts, "meta": [None, "{}", '{"a": 1}', "x", None, "[1]"]}
        ),
        path,
        row_group_size=2,
    )
    result = run_prepare(
        PrepareConfig(
            kind="corpus",
            inputs=[str(path)],
            output=str(tmp_path / "o"),
            model="tiny-random:llama",
            max_length=64,
            seq_len=64,
            pool={"workers": 0, "shard_rows": 2},
        ),
        log=lambda s: None,
    )
    assert result.counts.in_ == 6 == result.counts.ok + result.counts.quarantined
    assert result.counts.by_reason == {"null_value": 1, "empty_text": 1, "over_length": 1}
