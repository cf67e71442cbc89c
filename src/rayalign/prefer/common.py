"""What the dataset stages of this package (`reference`, `score`) share: their typed result."""

from __future__ import annotations

from typing import Any

from rayalign.results import Counts, StageResult, numeric_metrics


def dataset_result(
    stage: str, output: str, manifest: Any, metrics: dict[str, float] | None = None, **details: Any
) -> StageResult:
    """A dataset stage's `StageResult` from its committed manifest (a `Manifest` or its JSON form):
    the row counts, the manifest's numeric stats as metrics (plus `metrics`), `details` as given plus
    the number of shards."""
    data = manifest if isinstance(manifest, dict) else manifest.to_json()
    return StageResult(
        stage=stage,
        output=output,
        counts=Counts.model_validate(data["counts"]),
        metrics={**numeric_metrics(data.get("stats") or {}, counts=True), **(metrics or {})},
        details={**details, "shards": len(data.get("shards") or [])},
    )
