"""Bradley–Terry reward-model training (sequence-classification head, loss −log σ(r_w − r_l)) as a Ray job.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/reward.py rayjobs/configs/reward_tiny.yaml scaling.workers=2
    python rayjobs/reward.py rayjobs/configs/reward_tiny.yaml max_steps=5

Pairs are validated and tokenised into `<output_dir>/prepared`, then the training engine runs the
`reward` objective. Prints the summary: checkpoint (an HF sequence-classification folder), final
loss and the held-in ranking accuracy. Score rows with it through rayjobs/score.py.
"""

from __future__ import annotations

import sys

from rayalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["reward", *sys.argv[1:]]))
