"""Training fixtures: small packed datasets tokenised once per session with the tiny model's tokenizer.

Sizes stay small on purpose: the tiny model's 49,152-token vocabulary dominates every step's cost.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = "tiny-random:llama"


@pytest.fixture(scope="session")
def chat_packed(tmp_path_factory, tiny_model_path) -> str:
    from rayalign.data.prepare import PrepareConfig, run_prepare
    from rayalign.data.shards import PoolConfig

    out = tmp_path_factory.mktemp("chat_packed")
    run_prepare(
        PrepareConfig(
            kind="chat",
            inputs=[str(REPO / "rayjobs/data/chat.jsonl")],
            output=str(out),
            model=TINY,
            max_length=128,
            seq_len=128,
            pool=PoolConfig(workers=0),
        ),
        log=lambda *_: None,
    )
    return str(out)
