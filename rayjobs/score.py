"""Reward for every (prompt, response) row — or both sides of every pair — as a Ray job.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/score.py rayjobs/configs/reward_score_tiny.yaml
    python rayjobs/score.py rayjobs/configs/reward_score_tiny.yaml model=runs/reward-tiny/checkpoints/step-000020/model

A sharded actor pass holding the reward model (`pool.workers` actors, `pool.num_cpus` each); writes
parquet shards with `reward` (or reward_chosen / reward_rejected / reward_margin) + manifest.json,
bad rows to quarantine/, and resumes by skipping finished shards.
"""

from __future__ import annotations

import sys

from rayalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
