"""One place that maps paths and URIs to filesystems: local folders, s3://, gs://, hdfs://, ...

Every stage reads and writes through these functions, so a run folder can live in object storage
(`run_dir: s3://bucket/run`) as well as on a local disk. A URI is never turned into a local path.

Object stores have no atomic rename, so commits follow one rule everywhere: write the data first
and a small marker (a manifest, a stage record, a `.done` file) last; readers treat anything whose
marker is missing as absent. A single object PUT is atomic, so a JSON marker written with
`write_json` is either there whole or not at all; on local disks the same call writes a temporary
file and renames it.

S3-compatible endpoints (MinIO, a test server on 127.0.0.1) are picked up from the standard
`AWS_ENDPOINT_URL` environment variable, which pyarrow reads; credentials come from the usual AWS
variables or the instance role.

Model folders stored under a URI are copied once per node into a local cache keyed by their
content listing (`local_copy`), so every actor on a node shares one download.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow.fs as pafs

__all__ = [
    "is_uri",
    "filesystem",
    "join",
    "parent",
    "basename",
    "exists",
    "is_dir",
    "makedirs",
    "list_dir",
    "glob",
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "read_json",
    "write_json",
    "remove",
    "remove_tree",
    "open_input",
    "open_output",
    "upload_dir",
    "download_dir",
    "local_copy",
    "cache_root",
    "file_size",
]


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (s3, gs, hdfs, file); false for plain local paths."""
    return "://" in str(path)


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it). Local paths are made absolute (`~` expanded)."""
    s = str(path)
    if is_uri(s):
        fs, inner = pafs.FileSystem.from_uri(s)
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(s).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with `/` for URIs and os.path rules for local paths."""
    s = str(base)
    if is_uri(s):
        for p in parts:
            s = s.rstrip("/") + "/" + str(p).lstrip("/")
        return s
    return str(Path(s, *parts))


def parent(path: str | os.PathLike) -> str:
    s = str(path).rstrip("/")
    if is_uri(s):
        scheme, rest = s.split("://", 1)
        return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else s
    return str(Path(s).parent)


def basename(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _info(path: str | os.PathLike) -> pafs.FileInfo:
    fs, p = filesystem(path)
    return fs.get_file_info(p)


def exists(path: str | os.PathLike) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_dir(path: str | os.PathLike) -> bool:
    """A folder; on object stores a prefix with at least one object under it counts as one."""
    info = _info(path)
    if info.type == pafs.FileType.Directory:
        return True
    if info.type == pafs.FileType.NotFound and is_uri(path):
        fs, p = filesystem(path)
        return bool(fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=False)))
    return False


def file_size(path: str | os.PathLike) -> int:
    info = _info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{path}: no such file")
    return int(info.size or 0)


def makedirs(path: str | os.PathLike) -> None:
    """Create a local folder (and parents); a no-op on object stores, where prefixes need no creation."""
    if not is_uri(path):
        Path(str(path)).expanduser().mkdir(parents=True, exist_ok=True)


def list_dir(path: str | os.PathLike, recursive: bool = False) -> list[str]:
    """Paths (same style as `path`: URI or local) of the entries under a folder; [] if it is absent."""
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=recursive))
    base = str(path).rstrip("/")
    out = []
    for info in infos:
        rel = info.path[len(p) :].lstrip("/")
        out.append(join(base, rel))
    return sorted(out)


def glob(folder: str | os.PathLike, pattern: str) -> list[str]:
    """Files directly in `folder` whose name matches `pattern` (fnmatch), sorted by name."""
    return [f for f in list_dir(folder) if fnmatch.fnmatch(basename(f), pattern)]


def open_input(path: str | os.PathLike) -> Any:
    """A seekable binary file (pyarrow NativeFile) for reading, e.g. for parquet or byte ranges."""
    fs, p = filesystem(path)
    try:
        return fs.open_input_file(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


@contextlib.contextmanager
def open_output(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write a file so that readers see all of it or none of it.

    Local: a temporary sibling renamed over the target on success. Object stores: one upload that
    becomes visible when the stream closes (a failed write leaves nothing behind).
    """
    s = str(path)
    if is_uri(s):
        fs, p = filesystem(s)
        with fs.open_output_stream(p) as fh:
            yield fh
        return
    target = Path(s).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(p) as fh:
            return fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open_output(path) as fh:
        fh.write(data)


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON document at `path`, or `default` when it is absent or torn (treated as not written)."""
    try:
        return json.loads(read_bytes(path))
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError):
        return default


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """The one JSON writer: atomic on local disks, a single PUT on object stores."""
    write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8"))


def remove(path: str | os.PathLike) -> None:
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(p)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder and everything under it; absent folders are fine."""
    s = str(path)
    if not is_uri(s):
        shutil.rmtree(Path(s).expanduser(), ignore_errors=True)
        return
    fs, p = filesystem(s)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir_contents(p, missing_dir_ok=True)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(p)


def upload_dir(local: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a local folder's files to `target` (URI or local), then nothing else: callers that
    need a commit write their marker after this returns."""
    src = Path(str(local))
    for f in sorted(src.rglob("*")):
        if f.is_file():
            rel = f.relative_to(src).as_posix()
            with open_output(join(target, rel)) as out, open(f, "rb") as fh:
                shutil.copyfileobj(fh, out, length=8 << 20)


def download_dir(source: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy every file under `source` into the local folder `local` (created)."""
    dst = Path(str(local))
    fs, p = filesystem(source)
    for info in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(p) :].lstrip("/")
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(out, "wb") as fh:
            shutil.copyfileobj(src, fh, length=8 << 20)


def cache_root() -> Path:
    return Path(os.environ.get("RAYALIGN_CACHE", "~/.cache/rayalign")).expanduser()


def _listing_key(source: str) -> str:
    """A content key for a remote folder: names, sizes and modification times of its files."""
    fs, p = filesystem(source)
    infos = sorted(
        (i.path[len(p) :], i.size, str(i.mtime))
        for i in fs.get_file_info(pafs.FileSelector(p, recursive=True))
        if i.type == pafs.FileType.File
    )
    if not infos:
        raise FileNotFoundError(f"{source}: no files there")
    blob = json.dumps([source, infos], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def local_copy(source: str | os.PathLike) -> Path:
    """A local folder with the content of `source`.

    Local paths are returned as they are. A URI is downloaded once per node into
    `$RAYALIGN_CACHE/remote/<content key>/` (a lock file keeps concurrent actors on one node from
    downloading twice; a `.complete` marker tells a finished copy from a torn one).
    """
    s = str(source)
    if not is_uri(s):
        return Path(s).expanduser()
    key = _listing_key(s)
    root = cache_root() / "remote"
    target = root / key
    done = target / ".complete"
    if done.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if done.exists():
                return target
            tmp = root / f".{key}.partial.{os.getpid()}.{int(time.time())}"
            shutil.rmtree(tmp, ignore_errors=True)
            download_dir(s, tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            (target / ".complete").write_text(s + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
