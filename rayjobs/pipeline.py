"""`ray job submit` entry point for a whole pipeline (thin: it calls `rayalign.pipeline.main`).

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env cluster/runtime_env.yaml \
        -- python rayjobs/pipeline.py rayjobs/configs/quickstart.yaml stages.sft.config.max_steps=5

Inside a job `RAY_ADDRESS` is set, so every stage joins the job's cluster. Relative paths in the
pipeline YAML resolve against the uploaded working directory; point `run_dir` at shared storage
(an s3:// or gs:// URI where the stages support it, or a shared filesystem) on multi-node clusters.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import rayalign  # noqa: F401  (installed in the cluster image)
except ImportError:  # running from an uploaded working dir without an install: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rayalign.pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
