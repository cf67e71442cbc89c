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

Object stores fail in passing (503 SlowDown, reset connections, timeouts): every call here retries
those with exponential backoff and full jitter, `RAYALIGN_STORAGE_RETRIES` attempts in all (default
8) from a `RAYALIGN_STORAGE_BACKOFF_S` first delay (default 0.5 s, doubling, at most 30 s); a burst
of retries is logged once when it starts and once when it ends. A permanent error (403, a missing
bucket) is not retried: it raises `StorageError` naming the URI and the fix. Reads from an object
store fetch ranges of at least 8 MiB, each retried (a reset mid-answer reads the range again).
Writes are staged in memory or a local temporary file and uploaded once the writer finished without
an error, so a failed writer sends nothing; an upload under 10 MiB is one PUT (atomic), a bigger one
a multipart upload that a bucket lifecycle rule cleans up if the process dies mid-way (see
docs/cluster.md).

Model folders stored under a URI are copied once per node into a local cache keyed by their
content listing (`local_copy`), so every actor on a node shares one download.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pyarrow.fs as pafs

__all__ = [
    "StorageError",
    "DiskFullError",
    "RetryPolicy",
    "retry_policy",
    "retrying",
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


log = logging.getLogger("rayalign.storage")
T = TypeVar("T")

RETRIES_ENV = "RAYALIGN_STORAGE_RETRIES"
BACKOFF_ENV = "RAYALIGN_STORAGE_BACKOFF_S"
MAX_BACKOFF_S = 30.0
_READ_AHEAD = 8 << 20  # object-store reads fetch at least this much
_SPOOL_BYTES = 16 << 20  # writes are staged in memory up to this size, then in a local temporary file


class StorageError(OSError):
    """A permanent object-store error (denied, missing bucket): retrying cannot help."""


class RetryPolicy:
    """How transient object-store errors are retried: `attempts` in all, the k-th retry after a
    uniformly random delay in [0, min(max_s, first_s * 2**k)] (exponential backoff, full jitter)."""

    def __init__(self, attempts: int = 8, first_s: float = 0.5, max_s: float = MAX_BACKOFF_S) -> None:
        if attempts < 1 or first_s < 0:
            raise ValueError(
                f"storage retries: attempts must be >= 1 and the first delay >= 0 (got {attempts}, {first_s})"
            )
        self.attempts, self.first_s, self.max_s = attempts, first_s, max_s

    def delay(self, retry: int) -> float:
        return random.uniform(0, min(self.max_s, self.first_s * 2**retry))


def retry_policy() -> RetryPolicy:
    """The policy from `RAYALIGN_STORAGE_RETRIES` and `RAYALIGN_STORAGE_BACKOFF_S` (defaults 8, 0.5 s)."""
    try:
        attempts = int(os.environ.get(RETRIES_ENV, "8"))
        first = float(os.environ.get(BACKOFF_ENV, "0.5"))
    except ValueError as e:
        raise ValueError(f"{RETRIES_ENV} must be an integer and {BACKOFF_ENV} a number of seconds: {e}") from None
    return RetryPolicy(attempts, first)


# AWS SDK error names and HTTP texts that mean "try again"; anything else is not retried
_TRANSIENT = (
    "SLOW_DOWN",
    "SlowDown",
    "NETWORK_CONNECTION",
    "INTERNAL_FAILURE",
    "SERVICE_UNAVAILABLE",
    "REQUEST_TIMEOUT",
    "RequestTimeout",
    "THROTTLING",
    "Throttling",
    "InternalError",
    "ServiceUnavailable",
    "curlCode",
    "Connection reset",
    "Broken pipe",
    "timed out",
    "HTTP response code: 500",
    "HTTP response code: 502",
    "HTTP response code: 503",
    "HTTP response code: 504",
    "HTTP status 500",
    "HTTP status 502",
    "HTTP status 503",
    "HTTP status 504",
    "NO_SUCH_UPLOAD",  # a completion retried after its answer was lost: the whole upload is redone
)
_DENIED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "HTTP response code: 403",
    "INVALID_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH",
)
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "Bucket does not exist", "bucket does not exist")


def _classify(e: BaseException, uri: str) -> StorageError | None:
    """A StorageError for a permanent error, None for a transient one; other errors re-raise as they are."""
    text = str(e)
    if any(m in text for m in _DENIED):
        return StorageError(
            f"{uri}: access denied by the object store ({text.strip()[:300]}); check the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the instance role) and that the bucket policy allows this"
        )
    if any(m in text for m in _NO_BUCKET):
        bucket = uri.split("://", 1)[-1].split("/", 1)[0]
        return StorageError(f"{uri}: bucket {bucket!r} does not exist; create it or fix the URI")
    return None


def _transient(e: BaseException) -> bool:
    return (
        isinstance(e, OSError)
        and not isinstance(e, FileNotFoundError | StorageError)
        and any(m in str(e) for m in _TRANSIENT)
    )


class _Bursts:
    """Logs a burst of retries once when it starts and once when a call succeeds again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0  # retries in the current burst (0: none running)
        self.total = 0  # retries since the process started

    def failed(self, uri: str, e: BaseException, policy: RetryPolicy) -> None:
        with self._lock:
            self.total += 1
            self.retries += 1
            first = self.retries == 1
        if first:
            log.warning(
                "object store: transient error on %s (%s); retrying with backoff, up to %d attempts per call (%s, %s)",
                uri,
                str(e).strip().splitlines()[0][:200],
                policy.attempts,
                RETRIES_ENV,
                BACKOFF_ENV,
            )

    def succeeded(self) -> None:
        if not self.retries:
            return
        with self._lock:
            n, self.retries = self.retries, 0
        if n:
            log.warning("object store: recovered after %d retried call(s)", n)


bursts = _Bursts()


def retrying(uri: str | os.PathLike, fn: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """`fn()`, retried on transient object-store errors; a permanent one raises StorageError naming
    `uri`. Local paths run `fn` once."""
    s = str(uri)
    if not is_uri(s):
        return fn()
    policy = policy or retry_policy()
    for attempt in range(policy.attempts):
        try:
            out = fn()
        except OSError as e:
            permanent = _classify(e, s)
            if permanent is not None:
                raise permanent from e
            if not _transient(e) or attempt == policy.attempts - 1:
                if _transient(e):
                    raise StorageError(
                        f"{s}: the object store kept failing after {policy.attempts} attempts ({e}); raise "
                        f"{RETRIES_ENV} or check the endpoint's health"
                    ) from e
                raise
            bursts.failed(s, e, policy)
            time.sleep(policy.delay(attempt))
        else:
            bursts.succeeded()
            return out
    raise AssertionError("unreachable")


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (s3, gs, hdfs, file); false for plain local paths."""
    return "://" in str(path)


_FS_CACHE: dict[tuple[str, ...], pafs.FileSystem] = {}
_FS_LOCK = threading.Lock()


def _object_store(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for a URI, one per bucket and endpoint; S3 ones open output streams lazily
    (so a small object is one PUT, never a multipart upload left open)."""
    scheme, rest = uri.split("://", 1)
    authority = rest.split("/", 1)[0]
    env = tuple(os.environ.get(k, "") for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID"))
    key = (scheme, authority, *env)
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
    if fs is None:
        fs, inner = retrying(uri, lambda: pafs.FileSystem.from_uri(uri))
        if isinstance(fs, pafs.S3FileSystem):
            rebuild, (options,) = fs.__reduce__()  # the same settings (endpoint, region, keys) ...
            fs = rebuild({**options, "allow_delayed_open": True})  # ... with lazy output streams
        with _FS_LOCK:
            _FS_CACHE[key] = fs
    inner = rest.split("?", 1)[0] if scheme in ("s3", "gs", "gcs") else pafs.FileSystem.from_uri(uri)[1]
    return fs, inner.rstrip("/")


def filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it). Local paths are made absolute (`~` expanded)."""
    s = str(path)
    if is_uri(s):
        return _object_store(s)
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
    return retrying(path, lambda: fs.get_file_info(p))


def exists(path: str | os.PathLike) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_dir(path: str | os.PathLike) -> bool:
    """A folder; on object stores a prefix with at least one object under it counts as one."""
    info = _info(path)
    if info.type == pafs.FileType.Directory:
        return True
    if info.type == pafs.FileType.NotFound and is_uri(path):
        fs, p = filesystem(path)
        sel = pafs.FileSelector(p, allow_not_found=True, recursive=False)
        return bool(retrying(path, lambda: fs.get_file_info(sel)))
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
    sel = pafs.FileSelector(p, allow_not_found=True, recursive=recursive)
    infos = retrying(path, lambda: fs.get_file_info(sel))
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
        if is_uri(path):
            return _RetryingInput(str(path), fs, p)
        return fs.open_input_file(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


@contextlib.contextmanager
def open_output(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write a file so that readers see all of it or none of it.

    Local: a temporary sibling renamed over the target on success. Object stores: the bytes are
    staged (memory, then a local temporary file past 16 MiB) and uploaded only after the writer
    finished without an error, with retries; a failed writer sends nothing.
    """
    s = str(path)
    if is_uri(s):
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
            yield spool
            _upload(spool, s)
        return
    target = Path(s).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw:
            fh = _DiskWriter(raw)
            yield fh  # type: ignore[misc]
        if fh.full is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            free = shutil.disk_usage(target.parent).free
            raise DiskFullError(
                f"{target}: no space left on device: the file needs {fh.written} bytes and "
                f"{free} bytes are free on the disk holding {target.parent}; free at least "
                f"{max(0, fh.written - free)} more bytes or point the output elsewhere, then run again "
                "(finished parts are kept)",
            ) from fh.full
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _upload(spool: IO[bytes], uri: str) -> None:
    """Send a staged file to `uri`, the whole upload again on a transient error."""
    fs, p = filesystem(uri)

    def once() -> None:
        spool.seek(0)
        with fs.open_output_stream(p) as out:
            shutil.copyfileobj(spool, out, length=8 << 20)

    retrying(uri, once)


class _RetryingInput(io.RawIOBase):
    """A seekable object-store file whose reads are byte ranges retried on transient errors (a
    connection reset mid-answer reopens the file and reads the same range again)."""

    def __init__(self, uri: str, fs: pafs.FileSystem, path: str) -> None:
        super().__init__()
        self.uri, self._fs, self._path = uri, fs, path
        self._fh: Any = retrying(uri, lambda: fs.open_input_file(path))
        self._size = int(self._fh.size())
        self._pos = 0
        self._block: tuple[int, bytes] = (0, b"")  # read ahead: many small reads, one ranged GET

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _range(self, n: int, at: int) -> bytes:
        def once() -> bytes:
            if self._fh is None:
                self._fh = self._fs.open_input_file(self._path)
            try:
                return bytes(self._fh.read_at(n, at))
            except OSError:
                self._fh = None  # a fresh connection for the next try
                raise

        return retrying(self.uri, once)

    def read(self, n: int | None = -1) -> bytes:
        n = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        if n <= 0:
            return b""
        start, block = self._block
        if not (start <= self._pos and self._pos + n <= start + len(block)):
            start, block = self._pos, self._range(min(max(n, _READ_AHEAD), self._size - self._pos), self._pos)
            self._block = (start, block)
        data = block[self._pos - start : self._pos - start + n]
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(memoryview(buffer).nbytes)
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


class DiskFullError(OSError):
    """A local write ran out of space; the message names the file and the bytes it needs."""

    errno = errno.ENOSPC


class _DiskWriter:
    """A binary file that, once the disk is full, counts the rest of the writer's bytes instead of
    failing at once, so the error can say how many bytes the whole file needs."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.written = 0
        self.full: OSError | None = None
        self.closed = False

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.full is None:
            view = memoryview(data).cast("B")
            try:
                done = 0
                while done < n:
                    done += self.raw.write(view[done:]) or 0
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.full = e
        self.written += n
        return n

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, p = filesystem(path)

    def once() -> bytes:
        with fs.open_input_stream(p) as fh:
            return fh.read()

    try:
        return retrying(path, once)
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
        retrying(path, lambda: fs.delete_file(p))


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder and everything under it; absent folders are fine."""
    s = str(path)
    if not is_uri(s):
        shutil.rmtree(Path(s).expanduser(), ignore_errors=True)
        return
    fs, p = filesystem(s)
    with contextlib.suppress(FileNotFoundError):
        retrying(s, lambda: fs.delete_dir_contents(p, missing_dir_ok=True))
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


@contextlib.contextmanager
def local_output(target: str | os.PathLike, prefix: str = "rayalign-out-") -> Iterator[Path]:
    """A local folder to write `target`'s files into.

    A local target is the folder itself. For a URI, the files are written to a temporary folder,
    uploaded when the block ends without an error (after whatever was at `target` is removed),
    and the temporary folder is deleted either way: a node's disk keeps no copy of an upload.
    """
    s = str(target)
    if not is_uri(s):
        yield Path(s).expanduser()
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
        remove_tree(s)
        upload_dir(tmp, s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_dir(source: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy every file under `source` into the local folder `local` (created)."""
    dst = Path(str(local))
    fs, p = filesystem(source)
    sel = pafs.FileSelector(p, recursive=True)
    for info in retrying(source, lambda: fs.get_file_info(sel)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(p) :].lstrip("/")
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)

        def once(src_path: str = info.path, out: Path = out) -> None:
            with fs.open_input_stream(src_path) as src, open(out, "wb") as fh:
                shutil.copyfileobj(src, fh, length=8 << 20)

        retrying(join(str(source), rel), once)


def cache_root() -> Path:
    return Path(os.environ.get("RAYALIGN_CACHE", "~/.cache/rayalign")).expanduser()


def _listing_key(source: str) -> str:
    """A content key for a remote folder: names, sizes and modification times of its files."""
    fs, p = filesystem(source)
    sel = pafs.FileSelector(p, recursive=True)
    infos = sorted(
        (i.path[len(p) :], i.size, str(i.mtime))
        for i in retrying(source, lambda: fs.get_file_info(sel))
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


def local_copy_or_none(source: str | os.PathLike | None) -> str | None:
    """`local_copy` of an optional folder (an adapter, say) as a string; None stays None."""
    return str(local_copy(source)) if source else None
