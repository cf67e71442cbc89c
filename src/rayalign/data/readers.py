"""Raw readers for jsonl / json / parquet on local paths or any pyarrow filesystem URI (s3://, gs://...).

Readers never raise on a bad row: each yields ``RawRow(index, value, text, error)`` where `error`
is a quarantine Reason for rows that cannot even be parsed (invalid UTF-8, broken JSON).
Row indices are stable, so a shard (file, start, stop) always names the same rows.
"""

from __future__ import annotations

import glob as _glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rayalign.data.schemas import Reason

FORMATS = ("jsonl", "json", "parquet")


@dataclass
class RawRow:
    index: int
    value: Any
    text: str
    error: Reason | None = None


def _fs_and_path(uri: str):
    import pyarrow.fs as pafs

    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def detect_format(path: str) -> str:
    name = path.lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: cannot tell the format from the name; use .jsonl, .json or .parquet")


def expand_inputs(inputs: list[str]) -> list[str]:
    """Expand local globs and directories into a sorted list of files (URIs pass through)."""
    files: list[str] = []
    for item in inputs:
        if "://" in item:
            files.append(item)
            continue
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix in (".jsonl", ".json", ".parquet"))
        else:
            found = sorted(_glob.glob(str(p))) if any(c in item for c in "*?[") else [str(p)]
        if not found:
            raise FileNotFoundError(f"input {item!r} matched no files")
        for f in found:
            if not Path(f).exists():
                raise FileNotFoundError(f"input file {f} does not exist")
        files.extend(found)
    return files


def _read_bytes(uri: str) -> bytes:
    fs, path = _fs_and_path(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def _jsonl_lines(data: bytes) -> list[bytes]:
    """Non-blank lines; blank lines are not rows."""
    return [ln for ln in data.split(b"\n") if ln.strip()]


def count_rows(uri: str, fmt: str | None = None) -> int:
    fmt = fmt or detect_format(uri)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        fs, path = _fs_and_path(uri)
        return pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
    if fmt == "jsonl":
        return len(_jsonl_lines(_read_bytes(uri)))
    return sum(1 for _ in read_rows(uri, fmt))


def _decode_line(index: int, line: bytes) -> RawRow:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRow(index, None, line.decode("utf-8", errors="replace"),
                      Reason("invalid_utf8", f"line is not valid UTF-8 ({e.reason} at byte {e.start})"))
    try:
        return RawRow(index, json.loads(text), text)
    except json.JSONDecodeError as e:
        return RawRow(index, None, text, Reason("unparseable_json", f"not valid JSON: {e.msg} at column {e.colno}"))


def read_rows(uri: str, fmt: str | None = None, start: int = 0, stop: int | None = None) -> Iterator[RawRow]:
    """Yield raw rows [start, stop) of one file."""
    fmt = fmt or detect_format(uri)
    if fmt == "jsonl":
        lines = _jsonl_lines(_read_bytes(uri))
        for i in range(start, len(lines) if stop is None else min(stop, len(lines))):
            yield _decode_line(i, lines[i])
    elif fmt == "json":
        data = _read_bytes(uri)
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            # a whole-file failure is one quarantined row: nothing is silently lost
            if start == 0:
                yield RawRow(0, None, data[:2000].decode("utf-8", "replace"), Reason("unparseable_json", f"file is not valid JSON: {e}"))
            return
        items = doc.get("data", doc.get("rows")) if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            items = [doc]
        for i in range(start, len(items) if stop is None else min(stop, len(items))):
            yield RawRow(i, items[i], json.dumps(items[i], ensure_ascii=False, default=str))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        fs, path = _fs_and_path(uri)
        table = pq.read_table(fs.open_input_file(path))
        stop = table.num_rows if stop is None else min(stop, table.num_rows)
        for i, row in enumerate(table.slice(start, max(stop - start, 0)).to_pylist(), start=start):
            yield RawRow(i, row, json.dumps(row, ensure_ascii=False, default=str))
    else:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
