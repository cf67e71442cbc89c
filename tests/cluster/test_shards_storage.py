"""The shard runner on a real S3 API (moto's server on 127.0.0.1): inputs and outputs in a bucket,
commit by marker, resume after a SIGKILL with another pool size, stale configs wiped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rayalign import storage
from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.readers import DataError
from rayalign.data.shards import PROGRESS, finished_shards, manifest_counts, read_dataset, read_manifest
from rayalign.results import Counts

REPO = Path(__file__).resolve().parents[2]


def corpus_lines(n: int) -> bytes:
    """`n` documents `d0..d{n-1}`; every 37th has a number for text (quarantined as wrong_type)."""
    rows = []
    for i in range(n):
        text: object = f"Document {i}. " + "The river runs past the old mill. " * (1 + i % 5)
        rows.append(json.dumps({"id": f"d{i}", "text": 5 if i % 37 == 0 else text}))
    return ("\n".join(rows) + "\n").encode()


def n_bad(n: int) -> int:
    return len(range(0, n, 37))


def cfg(inputs: list[str], out: str, **pool) -> PrepareConfig:
    return PrepareConfig(
        kind="corpus",
        inputs=inputs,
        output=out,
        model="tiny-random:llama",
        max_length=128,
        seq_len=256,
        pool={"workers": 0, "shard_rows": 50, "num_cpus": 0.5, **pool},
    )


def doc_ids(out: str) -> list[str]:
    return [d for ids in read_dataset(out, columns=["doc_ids"]).column("doc_ids").to_pylist() for d in ids]


@pytest.mark.timeout(180)
def test_prepare_reads_and_writes_a_bucket(s3_bucket, tmp_path, monkeypatch):
    """Input folder and output in the bucket give the same rows as local files; nothing local is made."""
    monkeypatch.chdir(tmp_path)
    data = corpus_lines(400)
    storage.write_bytes(f"{s3_bucket}/in/part-0.jsonl", data)
    (tmp_path / "corpus.jsonl").write_bytes(data)
    remote = run_prepare(cfg([f"{s3_bucket}/in"], f"{s3_bucket}/prep"), log=lambda s: None)
    local = run_prepare(cfg([str(tmp_path / "corpus.jsonl")], str(tmp_path / "local")), log=lambda s: None)

    assert remote.counts == Counts.model_validate(
        {
            "in": 400,
            "ok": 400 - n_bad(400),
            "quarantined": n_bad(400),
            "out_rows": remote.counts.to_json()["out_rows"],
            "by_reason": {"wrong_type": n_bad(400)},
        }
    )
    assert remote.counts.to_json() == local.counts.to_json()
    assert read_dataset(f"{s3_bucket}/prep").to_pylist() == read_dataset(tmp_path / "local").to_pylist()
    assert manifest_counts(read_manifest(f"{s3_bucket}/prep")) == remote.counts
    planned = storage.read_json(f"{s3_bucket}/prep/_plan.json")["shards"]
    assert len(finished_shards(f"{s3_bucket}/prep")) == planned >= 6  # byte ranges of ~50 rows
    quarantine = storage.glob(f"{s3_bucket}/prep/quarantine", "shard-*.parquet")
    assert sum(pq.read_metadata(storage.open_input(f)).num_rows for f in quarantine) == n_bad(400)
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir()), "a URI became a local folder"
    # a finished stage in the bucket is read as a dataset folder (its data shards) by the next
    # stage: token rows given as a corpus fail before any work, naming the shard and the fix
    with pytest.raises(DataError, match=r"prep/data/shard-00000\.parquet: its columns .* hold no corpus rows"):
        run_prepare(
            PrepareConfig(
                kind="corpus",
                inputs=[f"{s3_bucket}/prep"],
                output=f"{s3_bucket}/x",
                model="tiny-random:llama",
                max_length=128,
                pack=False,
                pool={"workers": 0, "shard_rows": 50},
            ),
            log=lambda s: None,
        )


@pytest.mark.timeout(180)
def test_a_shard_without_its_marker_is_absent(s3_bucket):
    """Data that landed without its marker (a kill between the two writes) is redone, not trusted."""
    out = f"{s3_bucket}/prep"
    storage.write_bytes(f"{s3_bucket}/in.jsonl", corpus_lines(300))
    first = run_prepare(cfg([f"{s3_bucket}/in.jsonl"], out), log=lambda s: None)
    want = read_dataset(out).to_pylist()
    storage.remove(f"{out}/manifest.json")
    storage.remove(f"{out}/{PROGRESS}/shard-00002.json")
    storage.write_bytes(f"{out}/data/shard-00002.parquet", b"torn")  # not even parquet
    logs: list[str] = []
    again = run_prepare(cfg([f"{s3_bucket}/in.jsonl"], out), log=logs.append)
    planned = storage.read_json(f"{out}/_plan.json")["shards"]
    assert any(f"{planned} shard(s), rows counted as read; {planned - 1} done, 1 to run" in m for m in logs), logs
    assert read_dataset(out).to_pylist() == want
    assert again.counts.to_json() == first.counts.to_json()


@pytest.mark.timeout(180)
def test_changed_config_wipes_a_partial_run_in_the_bucket(s3_bucket):
    out = f"{s3_bucket}/prep"
    storage.write_bytes(f"{s3_bucket}/in.jsonl", corpus_lines(200))
    run_prepare(cfg([f"{s3_bucket}/in.jsonl"], out), log=lambda s: None)
    storage.remove(f"{out}/manifest.json")  # an unfinished run of the old config
    logs: list[str] = []
    c = cfg([f"{s3_bucket}/in.jsonl"], out)
    c.pack = False
    m = run_prepare(c, log=logs.append)
    assert any("config changed" in s for s in logs)
    planned = storage.read_json(f"{out}/_plan.json")["shards"]
    assert any(f"{planned} shard(s), rows counted as read; 0 done, {planned} to run" in s for s in logs)
    assert m.counts.to_json()["out_rows"] == m.counts.to_json()["ok"] == 200 - n_bad(200)
    assert all(len(r["seq_lens"]) == 1 for r in read_dataset(out).to_pylist())


@pytest.mark.timeout(300)
def test_killed_prepare_resumes_with_another_pool_size(s3_bucket, tmp_path, ray_cluster):
    """`rayalign prepare` SIGKILLed mid-stage (in-process pool), resumed on a 2-actor Ray pool: the
    finished shards are kept (workers are a resource, not part of the config hash) and every row
    is written exactly once."""
    n, out = 3000, f"{s3_bucket}/prep"
    storage.write_bytes(f"{s3_bucket}/in.jsonl", corpus_lines(n))
    conf = tmp_path / "prepare.yaml"
    conf.write_text(yaml.safe_dump(cfg([f"{s3_bucket}/in.jsonl"], out).model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayalign.cli", "prepare", str(conf)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while len(finished_shards(out)) < 5:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no shard finished in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    done = len(finished_shards(out))
    planned = storage.read_json(f"{out}/_plan.json")["shards"]
    assert read_manifest(out) is None and 5 <= done < planned, f"the kill must land mid-stage ({done} shards done)"

    logs: list[str] = []
    resumed = run_prepare(cfg([f"{s3_bucket}/in.jsonl"], out, workers=2), log=logs.append)
    assert any(f"{planned} shard(s), rows counted as read; {done} done, {planned - done} to run" in s for s in logs), (
        logs[:3]
    )
    ids = doc_ids(out)
    assert len(ids) == len(set(ids)) == n - n_bad(n) == resumed.counts.to_json()["ok"]
    assert set(ids) == {f"d{i}" for i in range(n) if i % 37}
    assert resumed.counts.to_json()["in"] == n and resumed.counts.to_json()["quarantined"] == n_bad(n)
