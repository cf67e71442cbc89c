"""Read `torch.distributed.checkpoint` folders where they are: local disk, s3://, gs://.

    reader = storage_reader("s3://bucket/run/checkpoints/step-000100/dcp")
    dcp.load(state, storage_reader=reader)

DCP's own reader takes local paths only; this one gives it `rayalign.storage` (pyarrow) files.
"""

from __future__ import annotations

import contextlib

from rayalign import storage


class _ReadOnlyStorage:
    """DCP's file-system interface over `rayalign.storage` (pyarrow: local, s3://, gs://), for reading.

    DCP opens each shard file it needs and seeks to the byte range of every tensor (part) this rank
    loads, so a rank reads only what it owns of a checkpoint on object storage (ranged GETs), never
    the whole checkpoint, and nothing is staged on local disk.
    """

    @contextlib.contextmanager
    def create_stream(self, path, mode: str):
        if "r" not in mode:
            raise ValueError(f"{path}: checkpoints on object storage are read here, never written")
        with storage.open_input(str(path)) as f:
            yield f

    def concat_path(self, path, suffix: str) -> str:
        return storage.join(str(path), suffix)

    def init_path(self, path) -> str:
        return str(path)

    def exists(self, path) -> bool:
        return storage.exists(str(path))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return storage.is_uri(str(checkpoint_id))

    def rename(self, path, new_path) -> None:
        raise NotImplementedError("read-only")

    def mkdir(self, path) -> None:
        raise NotImplementedError("read-only")

    def rm_file(self, path) -> None:
        raise NotImplementedError("read-only")


def storage_reader(path: str):
    """A DCP StorageReader for a `dcp/` folder, local or on object storage (read in place)."""
    from torch.distributed.checkpoint import FileSystemReader

    if not storage.is_uri(path):
        return FileSystemReader(path)
    reader = FileSystemReader(path)
    reader.fs = _ReadOnlyStorage()  # type: ignore[assignment]  # DCP's FileSystemBase interface, duck-typed
    reader.path = path  # a URI string; the base class would have made it a Path
    return reader
