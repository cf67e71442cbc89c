"""Validate, tokenise and pack a dataset as a Ray job (config → stage → manifest summary).

ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/prepare.py rayjobs/configs/prepare_chat.yaml
python rayjobs/prepare.py rayjobs/configs/prepare_chat.yaml pool.workers=2   # on a local Ray cluster
"""

import sys

from rayalign.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("prepare", __doc__))
