"""Training rows, streamed by index: the data position is just the step counter.

Every epoch is a seeded permutation of the packed rows; step s takes the next `global_batch` rows of
that permutation and rank r takes rows r::world of them, split into `grad_accum` micro-batches.

Each rank reads only the parquet row groups that hold its own micro-batches (local disk or object
storage, through `rayalign.storage`), keeping a few decoded groups in a small LRU cache. The footers
(row counts) are all that is read up front, so a rank's data memory is O(micro-batch × row-group
size) whatever the corpus size.

Why not Ray Data's streaming split? Its block order and the split between workers depend on
scheduling and on how many rows each iterator has prefetched, so after a crash "where were we" is
a property of the lost iterator state, not of anything in the checkpoint. With a pure function
(seed, epoch, step, rank) → row indices, resuming at step k reads exactly the rows the
uninterrupted run would have read: none repeated, none skipped, for any number of restarts.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass

import torch

from rayalign import storage
from rayalign.config import ConfigError


@dataclass
class ReadStats:
    """What a RowSource has decoded so far (tests and benchmarks check data memory with it)."""

    rows_read: int = 0  # rows decoded from parquet (whole row groups)
    bytes_read: int = 0  # uncompressed bytes of the decoded row groups
    groups_read: int = 0


class RowSource:
    """The rows of a prepared dataset folder (`data/shard-*.parquet`), addressable by global index.

    `rows(indices)` returns dicts of columns in the order asked for. Only the row groups holding
    those rows are read; `cache_groups` decoded groups are kept (a micro-batch usually touches
    few groups, and without shuffling consecutive steps touch the same one).
    """

    def __init__(self, path: str, cache_groups: int = 4):
        folder = storage.join(path, "data")
        files = storage.glob(folder, "shard-*.parquet") if storage.is_dir(folder) else []
        if not files:
            raise ConfigError(
                f"data.path: {path} is not a prepared dataset folder (no data/shard-*.parquet); "
                f"run `rayalign prepare` or give data.inputs instead"
            )
        import pyarrow.parquet as pq

        self.files = files
        self.groups: list[tuple[int, int]] = []  # (file index, row group) in dataset order
        self.starts: list[int] = []  # global index of each group's first row
        names: dict[str, None] = {}
        total = 0
        for fi, f in enumerate(files):
            with storage.open_input(f) as fh:
                meta = pq.ParquetFile(fh).metadata
            names.update((meta.schema.column(i).path.split(".")[0], None) for i in range(meta.num_columns))
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    self.groups.append((fi, g))
                    self.starts.append(total)
                    total += n
        self.num_rows = total
        self.columns = list(names)
        self.stats = ReadStats()
        self._cache: OrderedDict[int, list[dict]] = OrderedDict()
        self._cache_groups = cache_groups

    def __len__(self) -> int:
        return self.num_rows

    def _group(self, gi: int) -> list[dict]:
        if gi in self._cache:
            self._cache.move_to_end(gi)
            return self._cache[gi]
        import pyarrow.parquet as pq

        fi, g = self.groups[gi]
        with storage.open_input(self.files[fi]) as fh:
            table = pq.ParquetFile(fh).read_row_group(g)
        self.stats.rows_read += table.num_rows
        self.stats.bytes_read += table.nbytes
        self.stats.groups_read += 1
        rows = table.to_pylist()
        self._cache[gi] = rows
        if len(self._cache) > self._cache_groups:
            self._cache.popitem(last=False)
        return rows

    def rows(self, indices: list[int]) -> list[dict]:
        out = []
        for i in indices:
            if not 0 <= i < self.num_rows:
                raise IndexError(f"row {i} outside the dataset's {self.num_rows} rows")
            gi = bisect.bisect_right(self.starts, i) - 1
            out.append(self._group(gi)[i - self.starts[gi]])
        return out


class DataOrder:
    def __init__(
        self,
        num_rows: int,
        micro_batch_size: int,
        grad_accum: int,
        world: int,
        rank: int,
        seed: int,
        shuffle: bool = True,
    ):
        self.per_rank = micro_batch_size * grad_accum
        self.global_batch = self.per_rank * world
        self.micro, self.world, self.rank = micro_batch_size, world, rank
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.steps_per_epoch = num_rows // self.global_batch  # the ragged tail of an epoch is dropped
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the dataset has {num_rows} rows but one optimizer step needs {self.global_batch} "
                f"(micro_batch_size × grad_accum × workers); lower them or add data"
            )
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
        chunk = self.permutation(epoch)[i * self.global_batch : (i + 1) * self.global_batch]
        mine = chunk[self.rank :: self.world]
        return [mine[j : j + self.micro] for j in range(0, self.per_rank, self.micro)]
