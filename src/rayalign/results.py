"""Typed results every stage returns, and the manifest a dataset stage commits.

The pipeline runner, the summary, `${stages.NAME.KEY}` references and the CLI read these fields and
nothing else, so a stage never has to guess which dict keys another module digs for.

- `StageResult`: `output` (dataset folder), `checkpoint` (model folder), `counts` (dataset stages),
  `metrics` (numbers only: losses, accuracies, packing efficiency; counts as integers) and
  `details` (anything else a stage wants on record, e.g. paths of reports, and `warnings`: a list
  of sentences a user should act on, which the run's summary prints).
- `Manifest`: what `manifest.json` of a dataset stage holds; its presence with `complete: true` is
  the commit marker of the stage's output folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rayalign import storage


class Status(StrEnum):
    """Lifecycle of a stage (pipeline records) or a pipeline run (summary)."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    PARTIAL = "partial"  # a pipeline stopped early on purpose (--stop-after)


class Counts(BaseModel):
    """Row accounting of a dataset stage: `in_` = `ok` + `quarantined` (serialised as `in`)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    in_: int = Field(0, alias="in")
    ok: int = 0
    quarantined: int = 0
    out_rows: int = 0
    by_reason: dict[str, int] = {}

    def reconciles(self) -> bool:
        return self.in_ == self.ok + self.quarantined

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


MANIFEST = "manifest.json"  # a dataset stage's manifest, in its output folder


class ShardReport(BaseModel):
    """One finished shard of a dataset stage: which rows it read, its counts (in = ok + quarantined),
    the output rows it wrote, its quarantine reasons and the processor's summed stats."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    shard: str
    source: str = ""
    start: int = 0
    stop: int = 0
    in_: int = Field(0, alias="in")
    ok: int = 0
    quarantined: int = 0
    out_rows: int = 0
    reasons: dict[str, int] = {}
    stats: dict[str, float] = {}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form, with the `in` key the shard markers and manifests hold."""
        return self.model_dump(mode="json", by_alias=True)


ACCUMULATOR_SUFFIXES = ("_sum", "_sq")  # running sums shards add up: a stage reports their means


def numeric_metrics(values: dict[str, Any], counts: bool = False) -> dict[str, int | float]:
    """Keep the finite real numbers of a dict (bools and strings are not metrics; nor are running
    sums such as `jaccard_sum`, whose means the stage reports). Integers stay integers; with
    `counts` (shard stats summed over shards: counts of rows, tokens, statuses) a whole float
    becomes an integer too, so `status.ok` reads 106, not 106.0."""
    out: dict[str, int | float] = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k.endswith(ACCUMULATOR_SUFFIXES):
            continue
        if not math.isfinite(float(v)):
            continue
        out[k] = int(v) if isinstance(v, int) or (counts and float(v).is_integer()) else float(v)
    return out


def summary_warnings(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(stage id, sentence) for every warning in a run summary's stage results (`details.warnings`)."""
    out = []
    for s in (summary or {}).get("stages") or []:
        for w in ((s.get("result") or {}).get("details") or {}).get("warnings") or []:
            if w:
                out.append((str(s.get("id") or s.get("name")), str(w)))
    return out


class StageResult(BaseModel):
    """What every stage's run function returns."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    output: str | None = None
    checkpoint: str | None = None
    counts: Counts | None = None
    metrics: dict[str, int | float] = {}  # counts stay integers; rates and means are named as such
    details: dict[str, Any] = {}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form; `counts` keeps the `in` key users see in summaries."""
        data = self.model_dump(mode="json", exclude={"counts"})
        data["counts"] = self.counts.to_json() if self.counts is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageResult:
        return cls.model_validate(data)


class Manifest(BaseModel):
    """`manifest.json` of a dataset stage's output folder (written last: it is the commit marker)."""

    model_config = ConfigDict(extra="allow")

    stage: str
    config_hash: str
    complete: bool = True
    counts: Counts = Counts()
    stats: dict[str, float] = {}
    shards: list[ShardReport] = []

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls.model_validate(data)

    def with_fields(self, **fields: Any) -> Manifest:
        """A copy with more top-level fields (a stage's summaries: packing efficiency, contrast...)."""
        return Manifest.model_validate({**self.to_json(), **fields})

    def to_result(self, output: str, metrics: dict[str, int | float] | None = None, **details: Any) -> StageResult:
        """The dataset stage's `StageResult`: its row counts, its numeric stats as metrics (plus
        `metrics`), and in details the manifest's location, the number of shards and `details`."""
        return StageResult(
            stage=self.stage,
            output=output,
            counts=self.counts.model_copy(deep=True),
            metrics={**numeric_metrics(self.stats, counts=True), **(metrics or {})},
            details={"manifest": storage.join(output, MANIFEST), "shards": len(self.shards), **details},
        )

    def log_counts(self, log: Callable[[str], None], rows: str = "output rows") -> None:
        """Log in = ok + quarantined → output rows, and the quarantined rows by reason."""
        c = self.counts
        log(f"[{self.stage}] in {c.in_} = ok {c.ok} + quarantined {c.quarantined} → {c.out_rows} {rows}")
        for reason, n in c.by_reason.items():
            log(f"    quarantined {n:5d}  {reason}")
