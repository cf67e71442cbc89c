"""Preference optimisation (APO-zero/down, DPO/cDPO/robust, IPO, SimPO, ORPO, KTO, RPO, hinge, BCO, NCA, SPPO, AOT,
DiscoPOP, EXO, mixtures; every loss of `rayalign.objectives`) as a Ray job.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/prefer.py rayjobs/configs/prefer_tiny.yaml scaling.workers=2
    python rayjobs/prefer.py rayjobs/configs/prefer_tiny.yaml objective.name=dpo objective.beta=0.1

The reference pass runs first (`reference.mode: precomputed`, skipped when the data already carry
reference log-probs), then the training engine (FSDP2 across `scaling.workers`, LoRA via `peft`,
resume from the last checkpoint). Prints the summary: checkpoint, final loss, held-in pair accuracy.
"""

from __future__ import annotations

import sys

from rayalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["prefer", *sys.argv[1:]]))
