"""Supervised fine-tuning (assistant-only loss, packed rows) as a Ray job (config → stage → summary).

    ray job submit --working-dir . -- python rayjobs/sft.py rayjobs/configs/sft.yaml [key.sub=value ...]
    python rayjobs/sft.py rayjobs/configs/sft.yaml max_steps=5        # same, on a local Ray cluster

With `scaling.workers: N` the stage runs a Ray Train TorchTrainer (FSDP2 across the N workers,
restarts from the last checkpoint after a worker failure); `workers: 0` trains in this process.
Prints the summary: final checkpoint (a Hugging Face folder), final loss, steps, metrics file.
"""

from __future__ import annotations

import json
import sys

from rayalign.config import ConfigError
from rayalign.stages import run_stage


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    try:
        summary = run_stage("sft", argv[0], argv[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
