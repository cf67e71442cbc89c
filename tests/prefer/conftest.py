"""One reference pass over the bundled pairs per test session, shared by the prefer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

PAIRS = str(Path(__file__).resolve().parents[2] / "rayjobs" / "data" / "pairs.jsonl")
TINY = "tiny-random:llama"


@pytest.fixture(scope="session")
def pairs_reference(tmp_path_factory) -> Path:
    """The `reference` stage run in-process (no Ray) on the 227-row file with the tiny random Llama."""
    from rayalign.prefer.reference import ReferenceConfig, run_reference

    out = tmp_path_factory.mktemp("pairs-reference") / "reference"
    run_reference(
        ReferenceConfig(
            inputs=[PAIRS], output=str(out), model=TINY, batch_size=16, pool={"workers": 0, "shard_rows": 128}
        ),
        log=lambda m: None,
    )
    return out
