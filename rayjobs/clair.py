"""Run the `clair` generation stage as a Ray job (config → stage → manifest summary).

ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/clair.py rayjobs/configs/clair.yaml
python rayjobs/clair.py rayjobs/configs/clair.yaml pool.workers=2   # on a local Ray cluster
"""

import sys

from rayalign.cli import job_main

if __name__ == "__main__":  # guard required: a vllm engine spawns its engine-core process
    sys.exit(job_main("clair", __doc__))
