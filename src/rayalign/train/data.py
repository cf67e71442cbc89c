"""Deterministic data order for training: the data position is just the step counter.

Every epoch is a seeded permutation of the packed rows; step s takes the next `global_batch` rows of
that permutation and rank r takes rows r::world of them, split into `grad_accum` micro-batches.
Each rank reads the parquet itself (memory-mapped) inside the loop.

Why not Ray Data's streaming split? Its block order and the split between workers depend on
scheduling and on how many rows each iterator has prefetched, so after a crash "where were we" is
a property of the lost iterator state, not of anything in the checkpoint. With a pure function
(seed, epoch, step, rank) → row indices, resuming at step k reads exactly the rows the
uninterrupted run would have read: none repeated, none skipped, for any number of restarts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rayalign.config import ConfigError


class RowSource:
    """All rows of a prepared dataset folder, addressable by index (each row a dict of columns)."""

    def __init__(self, path: str | Path):
        from rayalign.data.shards import read_dataset

        p = Path(path)
        if not (p / "data").is_dir():
            raise ConfigError(f"data.path: {p} is not a prepared dataset folder (no data/ shards); "
                              f"run `rayalign prepare` or give data.inputs instead")
        self.table = read_dataset(p)
        self.columns = list(self.table.column_names)

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self, indices: list[int]) -> list[dict]:
        return self.table.take(indices).to_pylist()


class DataOrder:
    def __init__(self, num_rows: int, micro_batch_size: int, grad_accum: int, world: int, rank: int,
                 seed: int, shuffle: bool = True):
        self.per_rank = micro_batch_size * grad_accum
        self.global_batch = self.per_rank * world
        self.micro, self.world, self.rank = micro_batch_size, world, rank
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.steps_per_epoch = num_rows // self.global_batch  # the ragged tail of an epoch is dropped
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the dataset has {num_rows} rows but one optimizer step needs {self.global_batch} "
                f"(micro_batch_size × grad_accum × workers); lower them or add data")
        self._perm: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                order = torch.randperm(self.num_rows, generator=g).tolist()
            else:
                order = list(range(self.num_rows))
            self._perm = (epoch, order)
        return self._perm[1]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def step_rows(self, step: int) -> list[list[int]]:
        """Row indices of this rank's micro-batches for optimizer step `step` (0-based)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        chunk = self.permutation(epoch)[i * self.global_batch:(i + 1) * self.global_batch]
        mine = chunk[self.rank::self.world]
        return [mine[j:j + self.micro] for j in range(0, self.per_rank, self.micro)]
