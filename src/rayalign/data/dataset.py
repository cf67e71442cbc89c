"""The one way a stage gets prepared input: a dataset folder as given, or raw files prepared once.

Training stages (`sft`, `pretrain`, `prefer`, `reward`) take either `data.path` (a folder written by
`prepare`, `reference` or another dataset stage) or `data.inputs` (raw files). `ensure_dataset`
returns the folder to read: the path as given, or `<output_dir>/prepared` after running `prepare`
there (resumable: a re-run with the same config skips finished shards). Paths are joined with
`storage.join`, so an `output_dir` such as `s3://bucket/run` stays a URI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from rayalign import storage
from rayalign.config import ConfigError
from rayalign.data.shards import PoolConfig

PREPARED = "prepared"  # the folder under a run's output_dir that holds its prepared raw inputs


def ensure_dataset(
    kind: Literal["corpus", "chat", "prompts", "pairs"],
    *,
    path: str | None,
    inputs: list[str],
    output_dir: str,
    model: str,
    max_length: int = 1024,
    seq_len: int = 1024,
    overlength: Literal["truncate", "quarantine"] = "quarantine",
    pool: PoolConfig | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """`path` when given; else `inputs` prepared as `kind` (tokenised with `model`'s tokenizer) into
    `<output_dir>/prepared`, whose location is returned."""
    if path:
        return path
    if not inputs:
        raise ConfigError("data: give data.path (a prepared dataset folder) or data.inputs (raw files)")
    from rayalign.data.prepare import PrepareConfig, run_prepare

    target = storage.join(output_dir, PREPARED)
    run_prepare(
        PrepareConfig(
            kind=kind,
            inputs=list(inputs),
            output=target,
            model=model,
            max_length=max_length,
            seq_len=seq_len,
            overlength=overlength,
            pool=pool if pool is not None else PoolConfig(),
        ),
        log=log,
    )
    return target


def is_dataset_folder(path: str) -> bool:
    """A folder written by a dataset stage (local or URI): it holds `manifest.json` or `data/`."""
    from rayalign.data.shards import MANIFEST

    return storage.exists(storage.join(path, MANIFEST)) or storage.is_dir(storage.join(path, "data"))
