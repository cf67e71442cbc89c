"""Evaluate a model against a baseline as a Ray job (instruction suite, reward, judge, held-out pairs).

ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/eval.py rayjobs/configs/eval.yaml
python rayjobs/eval.py rayjobs/configs/eval.yaml model=runs/quickstart/prefer/checkpoints/step-000020/model
"""

import sys

from rayalign.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("eval", __doc__))
