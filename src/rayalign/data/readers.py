"""Raw readers for jsonl / json / parquet / Arrow files on local paths or any pyarrow filesystem URI.

Readers never raise on a bad row: each yields ``RawRow(index, value, text, error)`` where `error`
is a quarantine Reason for rows that cannot even be decoded. File-level faults (a missing or
unreadable file, empty inputs) raise :class:`DataError` naming the file and the fix.

Shards are planned without reading the data (linear stage input: every byte is read about once):

- JSONL: byte ranges cut from the file size (shard length = `shard_rows` × the mean line length of
  the first 64 KiB). A line belongs to the shard in which it *starts*: a worker seeks to its range,
  skips the partial line before it and reads on past its end to finish its last line. A row's index
  is the byte offset of its line, so ids stay the same whatever the shard size.
- JSON (one document: an array, or an object with `data`/`rows`): one shard per file (a JSON
  document cannot be cut without parsing it; use JSONL for large inputs). Index = element index.
- Parquet: groups of whole row groups, planned from the footer. Arrow IPC files (a folder written
  by `datasets.Dataset.save_to_disk`): row ranges of memory-mapped files. Index = row number.
- `limit` (the first N rows) is planned by scanning only the first N lines, so the plan is exact.

Row decoding decisions: a UTF-8 byte-order mark at the start of a file and CRLF line ends are
accepted; JSON's non-standard NaN/Infinity (and numbers overflowing a float) are rejected as
`non_finite_number`; a key repeated in one object is `duplicate_key` (JSON leaves the meaning open,
so rayalign does not guess); lone UTF-16 surrogates (`"\\ud800"`) are `invalid_unicode` (no UTF-8
writer can store them); nesting beyond Python's recursion limit is `too_deep`; a last line without
its newline that does not parse is `truncated_line` (a file cut off while being written).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rayalign import storage
from rayalign.data.schemas import Reason

FILE_FORMATS = ("jsonl", "json", "parquet", "arrow")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}
BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 64 << 10  # at most this much is sampled to estimate the mean line length of a JSONL file
CHUNK = 1 << 20
TAIL_READ = 128  # reads past a range's end start this small and double: little over-read per shard
_SAVE_TO_DISK_META = ("state.json", "dataset_info.json")


class DataError(ValueError):
    """A file-level fault: the message names the file and what to do."""


@dataclass
class RawRow:
    index: int
    value: Any
    text: str | None  # the raw line; None where the source is columnar (rendered on demand)
    error: Reason | None = None

    def raw_text(self) -> str:
        if self.text is not None:
            return self.text
        try:
            return json.dumps(self.value, ensure_ascii=False, default=str)
        except (ValueError, RecursionError) as e:
            return f"<unprintable row: {e}>"


def detect_format(path: str) -> str:
    name = str(path).lower()
    for suffix, fmt in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the name; use .jsonl, .json, .parquet or .arrow")


# ---------------------------------------------------------------- inputs


def _wanted(path: str) -> bool:
    name = storage.basename(path)
    return (
        not name.startswith((".", "_"))
        and name not in _SAVE_TO_DISK_META
        and any(name.lower().endswith(s) for s in SUFFIXES)
    )


def save_to_disk_files(folder: str) -> list[str] | None:
    """Arrow files of a `datasets.Dataset.save_to_disk` folder in their saved order; None if it is not one."""
    state = storage.read_json(storage.join(folder, "state.json"))
    if not isinstance(state, dict) or "_data_files" not in state:
        return None
    files = [
        storage.join(folder, f["filename"]) for f in state["_data_files"] if isinstance(f, dict) and "filename" in f
    ]
    return files or None


def expand_inputs(inputs: list[str]) -> list[str]:
    """Expand globs and folders (local or URI) into a sorted list of data files.

    A folder saved by `datasets.Dataset.save_to_disk` becomes its Arrow files in order; a stage's
    output folder (it has a `manifest.json`) its `data/` shards; other folders contribute their .jsonl/.ndjson/.json/.parquet/.arrow files (recursively; names
    starting with `.` or `_` are bookkeeping and skipped).
    """
    files: list[str] = []
    for item in inputs:
        found: list[str]
        if any(c in storage.basename(item) for c in "*?["):
            found = [f for f in storage.glob(storage.parent(item), storage.basename(item)) if not storage.is_dir(f)]
        elif storage.is_dir(item):
            if storage.exists(storage.join(item, "manifest.json")):  # a stage's output: its data, not its quarantine
                item = storage.join(item, "data")
            found = save_to_disk_files(item) or [
                f for f in storage.list_dir(item, recursive=True) if _wanted(f) and not storage.is_dir(f)
            ]
        elif storage.exists(item):
            found = [item]
        else:
            raise FileNotFoundError(
                f"input {item!r} does not exist; check the path (inputs take files, folders or globs)"
            )
        if not found:
            raise FileNotFoundError(f"input {item!r} matched no data files (.jsonl, .json, .parquet, .arrow)")
        files.extend(found)
    return files


def open_input(path: str) -> Any:
    """A seekable input file; an unreadable one raises DataError naming it and the fix."""
    try:
        return storage.open_input(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot open for reading ({e}); check that it exists and is readable") from e


def file_size(path: str) -> int:
    try:
        return storage.file_size(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read its size ({e}); check that it exists and is readable") from e


# ---------------------------------------------------------------- JSON decoding


class _Fault(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.reason = Reason(code, detail)


def _constant(name: str) -> Any:
    raise _Fault("non_finite_number", f"{name} is not a number JSON allows; write null or a string instead")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Fault("non_finite_number", f"number {text[:40]} overflows a 64-bit float")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Fault("duplicate_key", f"key {dup!r} appears more than once in one object; keep one")
    return obj


_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float, object_pairs_hook=_object)
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_json(text: str) -> tuple[Any, Reason | None]:
    """Parse one JSON value under rayalign's rules (see the module docstring)."""
    try:
        value = _DECODER.decode(text)
    except _Fault as e:
        return None, e.reason
    except RecursionError:
        return None, Reason("too_deep", "JSON nested too deeply to parse; flatten the row")
    except json.JSONDecodeError as e:
        return None, Reason("unparseable_json", f"not valid JSON: {e.msg} at column {e.colno}")
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        return None, Reason("unparseable_json", f"not valid JSON: {e}")
    if _SURROGATE.search(text):  # escaped surrogates: fine in pairs, unstorable alone
        fault = _unicode_fault(value)
        if fault is not None:
            return None, fault
    return value, None


def decode_line(index: int, line: bytes, complete: bool = True) -> RawRow:
    """One JSONL line (without its newline); `complete` is False for a last line with no newline."""
    line = line.rstrip(b"\r")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRow(
            index,
            None,
            line.decode("utf-8", errors="replace"),
            Reason("invalid_utf8", f"line is not valid UTF-8 ({e.reason} at byte {e.start})"),
        )
    value, reason = decode_json(text)
    if reason is not None and not complete and reason.code == "unparseable_json":
        reason = Reason(
            "truncated_line",
            "the file ends inside this line (no newline and not valid JSON): "
            "the file was probably cut off while being written",
        )
    return RawRow(index, value, text, reason)


# ---------------------------------------------------------------- JSONL byte ranges


def iter_lines(fh: Any, start: int, stop: int | None, chunk: int = CHUNK) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, line, ended_by_newline) of every line *starting* in [start, stop) of an open file.

    Reads the range, the partial line before it (to find the first line start) and the rest of
    its last line; nothing else.
    """
    pos = max(start - 1, 0)
    fh.seek(pos)
    buf, off, eof = b"", 0, False

    def more() -> None:
        nonlocal buf, off, eof
        want = chunk if stop is None else max(min(chunk, stop - (pos + len(buf) - off)), 0)
        data = fh.read(want or TAIL_READ * (1 + min(len(buf) - off, chunk) // TAIL_READ))
        eof = not data
        buf, off = buf[off:] + data, 0

    if start > 0:  # the line before `start` belongs to the previous shard
        while (i := buf.find(b"\n", off)) < 0:
            if eof:
                return
            pos += len(buf) - off
            off = len(buf)
            more()
        pos += i + 1 - off
        off = i + 1
    while stop is None or pos < stop:
        i = buf.find(b"\n", off)
        while i < 0 and not eof:
            more()
            i = buf.find(b"\n", off)
        if i < 0:
            if off < len(buf):
                yield pos, buf[off:], False
            return
        yield pos, buf[off:i], True
        pos += i + 1 - off
        off = i + 1


def read_jsonl(path: str, start: int, stop: int | None) -> Iterator[RawRow]:
    with open_input(path) as fh:
        for offset, line, complete in iter_lines(fh, start, stop):
            line = _row_bytes(offset, line)
            if line:
                yield decode_line(offset, line, complete)


def _row_bytes(offset: int, line: bytes) -> bytes:
    """The line without a file-start BOM; b"" for a blank line (blank lines are not rows)."""
    if offset == 0 and line.startswith(BOM):
        line = line[len(BOM) :]
    return line if line.strip() else b""


def jsonl_plan(path: str, shard_rows: int, limit: int | None) -> tuple[list[tuple[int, int, int]], int]:
    """Byte ranges [(start, stop, rows or -1)] of a JSONL file and the rows they hold (-1 unknown)."""
    size = file_size(path)
    if size == 0:
        return [], 0
    if limit is not None:
        return _limited_plan(path, shard_rows, limit)
    with open_input(path) as fh:  # ~1% of the file, 4-64 KiB: enough lines for a mean
        head = fh.read(min(HEAD_BYTES, max(4096, size // 100)))
    lines = max(head.count(b"\n"), 1)
    step = max(1, round(len(head) / lines * shard_rows))
    return [(s, min(s + step, size), -1) for s in range(0, size, step)], -1


def _limited_plan(path: str, shard_rows: int, limit: int) -> tuple[list[tuple[int, int, int]], int]:
    """Exact ranges of the first `limit` rows: reads only the lines it keeps."""
    ranges: list[tuple[int, int, int]] = []
    start, n, end = 0, 0, 0
    with open_input(path) as fh:
        for offset, line, _ in iter_lines(fh, 0, None, chunk=16 << 10):  # small reads: stop near row `limit`
            if n >= limit:
                break
            end = offset + len(line) + 1
            if _row_bytes(offset, line):
                n += 1
                if n % shard_rows == 0:
                    ranges.append((start, end, shard_rows))
                    start = end
    if n % shard_rows:
        ranges.append((start, end, n % shard_rows))
    return ranges, n


# ---------------------------------------------------------------- JSON, parquet, Arrow


def read_json_doc(path: str, start: int = 0, stop: int = -1) -> Iterator[RawRow]:
    """Elements [start, stop) of a JSON document (stop < 0: to the end)."""
    with open_input(path) as fh:
        data = fh.read()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield RawRow(0, None, data[:2000].decode("utf-8", "replace"), Reason("invalid_utf8", f"file is not UTF-8: {e}"))
        return
    doc, reason = _decode_document(text)
    if reason is not None:  # a whole-file failure is one quarantined row: nothing is silently lost
        yield RawRow(0, None, text[:2000], Reason(reason.code, f"the file as a whole: {reason.detail}"))
        return
    items = doc.get("data", doc.get("rows")) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        items = [doc]
    check_unicode = bool(_SURROGATE.search(text))
    for i, item in enumerate(items[start:] if stop < 0 else items[start:stop], start=start):
        bad = _first_mark(item) or (_unicode_fault(item) if check_unicode else None)
        yield RawRow(i, item, None, bad)  # a bad element keeps its value for the quarantine's raw text


class _Mark:
    """Stands in for a value the strict rules reject, so one element of a document fails, not all."""

    def __init__(self, reason: Reason):
        self.reason = reason

    def __repr__(self) -> str:
        return f"<{self.reason.code}>"


def _lenient_object(pairs: list[tuple[str, Any]]) -> Any:
    try:
        return _object(pairs)
    except _Fault as e:
        return _Mark(e.reason)


def _lenient_float(text: str) -> Any:
    try:
        return _float(text)
    except _Fault as e:
        return _Mark(e.reason)


_LENIENT = json.JSONDecoder(
    parse_constant=lambda name: _Mark(Reason("non_finite_number", f"{name} is not a number JSON allows")),
    parse_float=_lenient_float,
    object_pairs_hook=_lenient_object,
)


def _decode_document(text: str) -> tuple[Any, Reason | None]:
    try:
        doc = _LENIENT.decode(text)
    except RecursionError:
        return None, Reason("too_deep", "JSON nested too deeply to parse; flatten the rows or use JSONL")
    except ValueError as e:
        return None, Reason("unparseable_json", f"not valid JSON: {e}")
    return (None, doc.reason) if isinstance(doc, _Mark) else (doc, None)


def _first_mark(value: Any) -> Reason | None:
    stack = [value]  # iterative: deep documents must not recurse
    while stack:
        v = stack.pop()
        if isinstance(v, _Mark):
            return v.reason
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _unicode_fault(value: Any) -> Reason | None:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return Reason("invalid_unicode", "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
    except (RecursionError, ValueError):
        return Reason("too_deep", "JSON nested too deeply to process; flatten the row")
    return None


def parquet_plan(path: str, shard_rows: int, limit: int | None) -> list[tuple[int, int, int]]:
    """Row ranges made of whole row groups (≥ shard_rows each unless the file ends), from the footer."""
    import pyarrow.parquet as pq

    with open_input(path) as fh:
        try:
            meta = pq.ParquetFile(fh).metadata
        except Exception as e:  # pyarrow raises ArrowInvalid & co.: name the file
            raise DataError(f"{path}: not a readable parquet file ({e}); re-export it or use .jsonl") from e
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return _row_ranges(sizes, shard_rows, limit)


def _row_ranges(block_rows: list[int], shard_rows: int, limit: int | None) -> list[tuple[int, int, int]]:
    ranges: list[tuple[int, int, int]] = []
    start = stop = 0
    total = sum(block_rows) if limit is None else min(limit, sum(block_rows))
    for n in block_rows:
        stop = min(stop + n, total)
        if stop - start >= shard_rows or stop == total:
            if stop > start:
                ranges.append((start, stop, stop - start))
            start = stop
        if stop == total:
            break
    return ranges


def read_parquet(path: str, start: int, stop: int) -> Iterator[RawRow]:
    """Rows [start, stop) of a parquet file, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    with open_input(path) as fh:
        pf = pq.ParquetFile(fh)
        groups: list[int] = []
        first = seen = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if seen + n > start and seen < stop:
                if not groups:
                    first = seen
                groups.append(g)
            seen += n
        if not groups:
            return
        table = pf.read_row_groups(groups).slice(start - first, stop - start)
    for i, row in enumerate(table.to_pylist(), start=start):
        yield RawRow(i, row, None)


def columns(path: str, fmt: str) -> list[str]:
    """Top-level column names of a parquet or Arrow file (the footer / stream schema only)."""
    if fmt == "arrow":
        return list(_arrow_table(path).column_names)
    import pyarrow.parquet as pq

    with open_input(path) as fh:
        return list(pq.ParquetFile(fh).schema_arrow.names)


def _arrow_table(path: str) -> Any:
    import pyarrow as pa

    try:
        if storage.is_uri(path):
            with open_input(path) as fh:
                return pa.ipc.open_stream(fh).read_all()
        return pa.ipc.open_stream(pa.memory_map(str(storage.filesystem(path)[1]))).read_all()
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not an Arrow IPC stream file ({e}); point inputs at the save_to_disk folder") from e


def arrow_plan(path: str, shard_rows: int, limit: int | None) -> list[tuple[int, int, int]]:
    """Row ranges of an Arrow file. Local files are memory-mapped, so counting rows reads no data."""
    n = _arrow_table(path).num_rows
    n = n if limit is None else min(n, limit)
    return [(s, min(s + shard_rows, n), min(s + shard_rows, n) - s) for s in range(0, n, shard_rows)]


def read_arrow(path: str, start: int, stop: int) -> Iterator[RawRow]:
    table = _arrow_table(path).slice(start, stop - start)
    for i, row in enumerate(table.to_pylist(), start=start):
        yield RawRow(i, row, None)


def read_range(path: str, fmt: str, start: int, stop: int) -> Iterator[RawRow]:
    """The rows of one shard: a byte range (jsonl), rows (parquet, arrow) or the whole file (json)."""
    if fmt == "jsonl":
        yield from read_jsonl(path, start, stop)
    elif fmt == "json":
        yield from read_json_doc(path, start, stop)
    elif fmt == "parquet":
        yield from read_parquet(path, start, stop)
    elif fmt == "arrow":
        yield from read_arrow(path, start, stop)
    else:
        raise DataError(f"{path}: unknown file format {fmt!r}; allowed: {', '.join(FILE_FORMATS)}")


def read_rows(path: str, fmt: str | None = None, limit: int | None = None) -> Iterator[RawRow]:
    """Every row of one file (or its first `limit`), for tools such as `rayalign inspect`."""
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        rows: Iterator[RawRow] = read_jsonl(path, 0, None)
    elif fmt in ("parquet", "arrow"):
        plan = parquet_plan(path, 1 << 30, limit) if fmt == "parquet" else arrow_plan(path, 1 << 30, limit)
        rows = (r for s, e, _ in plan for r in read_range(path, fmt, s, e))
    else:
        rows = read_json_doc(path)
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row
