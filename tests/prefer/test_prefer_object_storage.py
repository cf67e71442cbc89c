"""`prefer` with raw pair files and its run folder in an S3 bucket (a real S3 API: moto on 127.0.0.1).

The stage prepares its own inputs: the reference pass (`<output_dir>/reference`) and the tokenised
pairs (`<output_dir>/prepared`) must land in the bucket, and nothing may be written to a local
folder named after the URI (`s3:/bucket/...`, what joining a URI as a local path makes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign import storage
from rayalign.data.shards import read_dataset
from rayalign.prefer.stages import PreferConfig, run_prefer, tokenised_pairs

PAIRS = str(Path(__file__).resolve().parents[2] / "rayjobs" / "data" / "pairs.jsonl")
TINY = "tiny-random:llama"


@pytest.mark.timeout(300)
def test_prefer_prepares_raw_pairs_into_the_bucket(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URI joined as a local path would appear here as s3:/...
    out = f"{s3_bucket}/runs/prefer"
    cfg = PreferConfig.model_validate(
        dict(
            model=TINY,
            output_dir=out,
            data={"inputs": [PAIRS], "pool": {"workers": 0, "limit": 24}},
            reference={"pool": {"workers": 0, "limit": 24}, "batch_size": 8},
            objective={"name": "dpo", "beta": 0.1},
            micro_batch_size=4,
            max_steps=1,
            eval_pairs=0,
            progress=False,
        )
    )
    result = run_prefer(cfg, log=lambda m: None)
    assert result.details["data"] == f"{out}/reference"
    manifest = storage.read_json(f"{out}/reference/manifest.json")
    c = manifest["counts"]
    assert c["in"] == 24 and c["ok"] + c["quarantined"] == 24 and c["ok"] == c["out_rows"] > 0
    rows = read_dataset(f"{out}/reference", columns=["ref_chosen_logp"]).to_pylist()
    assert len(rows) == c["out_rows"] and all(r["ref_chosen_logp"] < 0 for r in rows)

    prepared = tokenised_pairs(cfg.train, log=lambda m: None)
    assert prepared == f"{out}/prepared"
    pm = storage.read_json(f"{out}/prepared/manifest.json")
    assert pm["counts"] == c  # the same 24 rows, the same reasons: validated the same way
    assert read_dataset(prepared, columns=["prompt_ids"]).num_rows == c["out_rows"]
    local = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name.startswith("s3:")]
    assert not local, f"a URI was joined as a local path: {local}"
    assert json.dumps(result.to_json())  # the result is plain JSON
