"""A Ray Data actor SIGKILLed from outside in the middle of a shard: the stage still completes with
every row exactly once (Ray restarts the actor and retries its shard; the retry rewrites the same
files and the shard's marker is written last)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.shards import finished_shards, read_dataset, read_manifest
from shard_kill_helpers import run_and_kill_one_actor

N, SHARD_ROWS = 2000, 100  # 20 shards of ~0.2-0.4 s each on one actor: a kill lands inside one


def corpus(path: Path) -> None:
    import json

    with path.open("w") as fh:
        for i in range(N):
            text = f"Document {i}. " + "The river runs past the old mill. " * (1 + i % 5)
            fh.write(json.dumps({"id": f"d{i}", "text": 5 if i % 37 == 0 else text}) + "\n")


@pytest.mark.timeout(300)
def test_sigkill_of_a_shard_actor_mid_shard_loses_no_row(ray_cluster, tmp_path):
    corpus(tmp_path / "in.jsonl")
    out = tmp_path / "out"
    cfg = PrepareConfig(
        kind="corpus",
        inputs=[str(tmp_path / "in.jsonl")],
        output=str(out),
        model="tiny-random:llama",
        max_length=128,
        seq_len=256,
        pool={"workers": 1, "num_cpus": 0.5, "shard_rows": SHARD_ROWS},
    )
    logs: list[str] = []
    manifest, _, done_at_kill = run_and_kill_one_actor(
        lambda: run_prepare(cfg, log=logs.append), out, after_shards=3, start_s=180, finish_s=240
    )
    assert done_at_kill < json.loads((out / "_plan.json").read_text())["shards"], "the kill must land mid-stage"

    m = manifest.counts
    bad = len(range(0, N, 37))
    assert (m.in_, m.ok, m.quarantined) == (N, N - bad, bad)
    planned = json.loads((out / "_plan.json").read_text())["shards"]
    assert len(read_manifest(out)["shards"]) == planned == len(finished_shards(out))
    ids = [d for row in read_dataset(out, columns=["doc_ids"]).column("doc_ids").to_pylist() for d in row]
    assert len(ids) == len(set(ids)) == N - bad
    assert set(ids) == {f"d{i}" for i in range(N) if i % 37}
