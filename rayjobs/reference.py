"""Reference log-probs for every pair, once, as a Ray job (a sharded actor pass holding the reference model).

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/reference.py CONFIG.yaml [key.sub=value ...]
    python rayjobs/reference.py CONFIG.yaml inputs='[rayjobs/data/pairs.jsonl]' output=runs/ref \
        model=tiny-random:llama pool.workers=2          # on a local Ray cluster

CONFIG holds a `ReferenceConfig` (inputs, output, model, adapter, max_length, batch_size, pool). The
output folder (parquet shards + manifest.json + quarantine/) is what `prefer` trains on with
`data.path`; finished shards are skipped when the job is re-run.
"""

from __future__ import annotations

import sys

from rayalign.cli import main

if __name__ == "__main__":
    sys.exit(main(["reference", *sys.argv[1:]]))
