"""Quickstart on the embedded default (SmolLM2-135M-Instruct, CPU, no downloads).

    make quickstart            # or: python rayjobs/quickstart.py [run_dir]

Prepares the bundled sample datasets (validate → quarantine → tokenise → pack) and prints their
statistics. Grows into the full pipeline (rewrite → ... → eval) as the stages land.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rayalign.data.prepare import PrepareConfig, run_prepare

DATA = Path(__file__).parent / "data"


def main(run_dir: str = "runs/quickstart") -> None:
    for kind in ("corpus", "chat", "prompts", "pairs"):
        cfg = PrepareConfig(kind=kind, inputs=[str(DATA / f"{kind}.jsonl")], output=f"{run_dir}/prepared/{kind}",
                            max_length=512, seq_len=1024, pool={"workers": 1, "shard_rows": 128})
        run_prepare(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:])
