"""Continued pretraining (causal LM over packed corpus rows) as a Ray job (config → stage → summary).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/pretrain.py rayjobs/configs/pretrain.yaml [key.sub=value ...]
    python rayjobs/pretrain.py rayjobs/configs/pretrain.yaml max_steps=5        # same, on a local Ray cluster

With `scaling.workers: N` the stage runs a Ray Train TorchTrainer (FSDP2 across the N workers,
restarts from the last checkpoint after a worker failure); `workers: 0` trains in this process.
Prints the summary: final checkpoint (a Hugging Face folder), final loss, steps, metrics file.
"""

import sys

from rayalign.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("pretrain", __doc__))
