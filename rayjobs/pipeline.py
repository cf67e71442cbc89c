"""`ray job submit` entry point for a whole pipeline (thin: it calls `rayalign.pipeline.main`).

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml \
        -- python rayjobs/pipeline.py rayjobs/configs/quickstart.yaml run_dir=s3://bucket/runs/qs

The runtime environment ships the rayalign package to the driver and every worker; inside a job
`RAY_ADDRESS` is set, so every stage joins the job's cluster. Relative paths in the pipeline YAML
resolve against the uploaded working directory; on a multi-node cluster point `run_dir` at object
storage (s3://, gs://): stage records, summary.json, outputs and logs are written there.
"""

from __future__ import annotations

import sys

from rayalign.pipeline import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
