"""GRPO with verifiable rewards as a Ray job (config → stage → summary).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/grpo.py rayjobs/configs/grpo_tiny.yaml [key.sub=value ...]
    python rayjobs/grpo.py rayjobs/configs/grpo_tiny.yaml max_steps=5        # same, on a local Ray cluster

With `scaling.workers: N` the policy trains on a Ray Train TorchTrainer (FSDP2 across the N workers)
and `engines` rollout engines run as Ray actors; `workers: 0` keeps both in this process.
Prints the summary: final checkpoint, reward mean and pass rate of the last step, metrics file.
"""

import sys

from rayalign.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("grpo", __doc__))
