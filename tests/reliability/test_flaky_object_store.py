"""Object-storage paths through a flaky S3 endpoint: a fault-injecting proxy (resets at accept and
mid-answer, 503 SlowDown, slow answers; seeded) in front of the S3 test server on 127.0.0.1.

At a 20% fault rate every path completes with exact results; a failed writer leaves no object and no
open multipart upload behind; permanent errors (403, a missing bucket) fail at once with a clear error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import boto3
import pytest

from rayalign import storage
from rayalign.data.prepare import PrepareConfig, run_prepare
from rayalign.data.shards import read_dataset

from .faulty_proxy import FAULTS, FaultyProxy

REPO = Path(__file__).resolve().parents[2]
CHAT = REPO / "rayjobs" / "data" / "chat.jsonl"


@pytest.fixture
def flaky(s3_server, monkeypatch):
    """Every object-store call of this process goes through the proxy, 20% of requests faulted."""
    with FaultyProxy(s3_server, rate=0.2, seed=25, slow_s=0.2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv(storage.BACKOFF_ENV, "0.05")
        yield proxy


def bucket_name(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def open_uploads(s3_server: str, uri: str) -> list[str]:
    """Multipart uploads still open in the bucket (ListMultipartUploads, straight to the server)."""
    answer = boto3.client("s3", endpoint_url=s3_server).list_multipart_uploads(Bucket=bucket_name(uri))
    return [u["Key"] for u in answer.get("Uploads", [])]


def prepare_cfg(inputs: list[str], out: str) -> PrepareConfig:
    return PrepareConfig(
        kind="chat",
        inputs=inputs,
        output=out,
        model="builtin:smollm2-135m-instruct",
        max_length=512,
        overlength="quarantine",
        pack=True,
        seq_len=1024,
        pool={"workers": 0, "shard_rows": 32},
    )


@pytest.mark.timeout(300)
def test_prepare_s3_to_s3_through_faults(s3_server, s3_bucket, flaky, tmp_path):
    """The bundled chat sample, read from and written to the bucket through 20% faults: the counts and
    rows of a clean local run (in 230 = ok 220 + quarantined 10), no upload left open."""
    boto3.client("s3", endpoint_url=s3_server).put_object(
        Bucket=bucket_name(s3_bucket), Key="in/chat.jsonl", Body=CHAT.read_bytes()
    )
    clean = run_prepare(prepare_cfg([str(CHAT)], str(tmp_path / "clean")), log=lambda s: None)
    assert (clean.counts.in_, clean.counts.ok, clean.counts.quarantined) == (230, 220, 10)

    out = f"{s3_bucket}/prepared/chat"
    flaky_run = run_prepare(prepare_cfg([f"{s3_bucket}/in/chat.jsonl"], out), log=lambda s: None)
    assert flaky_run.counts == clean.counts
    cols = ["input_ids", "labels"]
    assert (
        read_dataset(out, columns=cols).to_pylist() == read_dataset(str(tmp_path / "clean"), columns=cols).to_pylist()
    )
    assert set(flaky.counts) == set(FAULTS) and sum(flaky.counts.values()) >= 0.1 * flaky.requests
    assert open_uploads(s3_server, s3_bucket) == []


@pytest.mark.timeout(120)
def test_records_summaries_and_model_download_through_faults(s3_bucket, flaky, tmp_path, monkeypatch):
    """Stage records and summaries (JSON markers), listings, and a model folder downloaded once per node."""
    from rayalign.pipeline.records import (
        StageRecord,
        StageSummary,
        read_record,
        read_summary,
        write_record,
        write_summary,
    )
    from rayalign.results import Status

    run = f"{s3_bucket}/runs/a"

    def stage_summary_of(r: StageRecord) -> StageSummary:
        return StageSummary(
            name=r.name, id=r.id, stage=r.stage, status=r.status, skipped=False, config_hash=r.config_hash
        )

    def record(i: int) -> StageRecord:
        return StageRecord(name=f"stage-{i:02d}", id=f"stage-{i:02d}", stage="prepare", status=Status.COMPLETE,
                           config_hash=f"h{i}", seconds=float(i))  # fmt: skip

    for i in range(20):
        write_record(run, f"stage-{i:02d}", record(i))
    stages = [stage_summary_of(record(i)) for i in range(20)]
    write_summary(run, Status.COMPLETE, stages, 1.5, None)
    assert [(r.seconds if (r := read_record(run, f"stage-{i:02d}")) else None) for i in range(20)] == list(range(20))
    assert len(storage.list_dir(run)) == 21
    summary = read_summary(run)
    assert summary is not None and summary["status"] == "complete"
    assert [s["name"] for s in summary["stages"]] == [f"stage-{i:02d}" for i in range(20)]

    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    files = {"config.json": b'{"a": 1}', "sub/w.bin": os.urandom(3 << 20), "tokenizer.json": b"{}" * 5000}
    for rel, data in files.items():
        (model / rel).write_bytes(data)
    storage.upload_dir(model, f"{s3_bucket}/models/m")
    local = storage.local_copy(f"{s3_bucket}/models/m")
    assert {rel: (local / rel).read_bytes() for rel in files} == files
    assert sum(flaky.counts.values()) > 5


@pytest.mark.timeout(120)
def test_failed_writer_leaves_nothing(s3_server, s3_bucket):
    """A writer that raises, small (one PUT) or large (past the multipart size): no object, no open upload."""
    for size in (1000, 25 << 20):
        target = f"{s3_bucket}/torn-{size}.bin"
        with pytest.raises(RuntimeError), storage.open_output(target) as fh:
            fh.write(os.urandom(size))
            raise RuntimeError("killed mid-write")
        assert not storage.exists(target)
    assert open_uploads(s3_server, s3_bucket) == []
    storage.write_bytes(f"{s3_bucket}/whole.bin", b"x" * (25 << 20))  # and a large one that succeeds: whole
    assert storage.file_size(f"{s3_bucket}/whole.bin") == 25 << 20
    assert open_uploads(s3_server, s3_bucket) == []


@pytest.mark.timeout(60)
def test_permanent_errors_fail_at_once(s3_server, s3_bucket, monkeypatch):
    """403 and a missing bucket: one clear error naming the URI and the fix, no retry loop."""
    with FaultyProxy(s3_server, rate=0.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        t0 = time.monotonic()
        with pytest.raises(storage.StorageError, match=r"no-such-bucket-x.*does not exist; create it or fix the URI"):
            storage.write_json("s3://no-such-bucket-x/run/stage.json", {"a": 1})
        proxy.deny = True
        before = proxy.requests
        with pytest.raises(storage.StorageError, match=r"/denied\.json: access denied .*check the credentials"):
            storage.read_json(f"{s3_bucket}/denied.json")
        assert proxy.requests - before <= 3  # no retry loop on top of a 403
        assert time.monotonic() - t0 < 10


@pytest.mark.timeout(60)
def test_a_burst_is_logged_once_and_bounded(s3_server, s3_bucket, monkeypatch, caplog):
    """Every request answered 503 SlowDown: the write gives up after the configured attempts with an
    error naming the URI and the setting, and the burst is one warning, not one per retry; once the
    store answers again, one 'recovered' line."""
    caplog.set_level(logging.WARNING, logger="rayalign.storage")
    monkeypatch.setenv(storage.RETRIES_ENV, "4")
    monkeypatch.setenv(storage.BACKOFF_ENV, "0.01")
    with FaultyProxy(s3_server, rate=1.0, faults=("slowdown",)) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        target = f"{s3_bucket}/busy.json"
        with pytest.raises(storage.StorageError, match=r"busy\.json: the object store kept failing after 4 attempts"):
            storage.write_json(target, {"a": 1})
        assert proxy.counts["slowdown"] >= 4
        proxy.rate = 0.0
        storage.write_json(target, {"a": 2})
        storage.write_json(target, {"a": 3})
        assert storage.read_json(target) == {"a": 3}
    messages = [r.getMessage() for r in caplog.records if r.name == "rayalign.storage"]
    assert sum("transient error on" in m for m in messages) == 1
    assert sum("recovered after" in m for m in messages) == 1, messages


def test_retry_policy_from_env(monkeypatch):
    monkeypatch.setenv(storage.RETRIES_ENV, "3")
    monkeypatch.setenv(storage.BACKOFF_ENV, "2")
    policy = storage.retry_policy()
    assert (policy.attempts, policy.first_s) == (3, 2.0)
    assert all(0 <= policy.delay(k) <= min(30.0, 2.0 * 2**k) for k in range(8) for _ in range(20))
    monkeypatch.setenv(storage.RETRIES_ENV, "many")
    with pytest.raises(ValueError, match=storage.RETRIES_ENV):
        storage.retry_policy()


@pytest.mark.timeout(300)
def test_checkpoint_save_and_resume_through_faults(s3_bucket, flaky, tmp_path, chat_packed, tiny_model_path):
    """`sft` with its model, data and run folder in the bucket, stopped after a checkpoint and resumed,
    every object-store call through 20% faults: the loss curve of a local uninterrupted run."""
    import sys

    from rayalign.train import checkpoint as ckpt
    from rayalign.train.config import TrainConfig
    from rayalign.train.launcher import launch
    from rayalign.train.metrics import read_metrics

    sys.path.insert(0, str(REPO / "tests" / "train"))
    from train_helpers import base_config

    common = dict(max_steps=4, checkpoint={"every": 2, "keep_last": 2})
    launch(TrainConfig.model_validate(base_config(tmp_path / "local", chat_packed, **common)))
    storage.upload_dir(tiny_model_path, f"{s3_bucket}/models/tiny")
    storage.upload_dir(chat_packed, f"{s3_bucket}/data/chat")
    out = f"{s3_bucket}/runs/sft"
    cfg = base_config(out, f"{s3_bucket}/data/chat", model=f"{s3_bucket}/models/tiny", **common)
    first = launch(TrainConfig.model_validate({**cfg, "stop_at_step": 2}))
    assert first.details["stopped_early"]
    assert ckpt.latest_checkpoint(out) == ckpt.step_dir(out, 2)
    resumed = launch(TrainConfig.model_validate(cfg))
    assert resumed.details["resumed_at"] == 2 and resumed.metrics["steps"] == 4
    want = [r["loss"] for r in read_metrics(tmp_path / "local")]
    assert [r["loss"] for r in read_metrics(out)] == pytest.approx(want, abs=1e-5)
    assert sum(flaky.counts.values()) > 10


@pytest.mark.timeout(300)
def test_eval_report_through_faults_equals_the_clean_one(s3_bucket, flaky, tmp_path):
    """The eval stage (tiny model, greedy, 8 suite prompts) writing its answers, results, report and
    plots into the bucket through 20% faults: the same files and the same report as a clean local run
    (paths aside)."""
    from rayalign.eval.stage import EvalConfig, run_eval

    def run(output: str):
        cfg = EvalConfig(model="tiny-random:llama", output=output, limit=8, params={"max_tokens": 12})
        return run_eval(cfg, log=lambda *_: None)

    before = flaky.requests
    remote = run(f"{s3_bucket}/eval")
    assert flaky.requests - before >= 5 and sum(flaky.counts.values()) > 0  # the writes really went through faults
    local = run(str(tmp_path / "eval"))
    assert remote.metrics == local.metrics
    prefix = f"{s3_bucket}/eval/"
    listed = [f[len(prefix) :] for f in storage.list_dir(f"{s3_bucket}/eval", recursive=True)]
    names = sorted(n for n in listed if not any(m.startswith(n + "/") for m in listed))  # files, not folders
    files = sorted(str(p.relative_to(tmp_path / "eval")) for p in (tmp_path / "eval").rglob("*") if p.is_file())
    assert names == files and "report/report.md" in names

    # the report names its own folder and counts the suite's reads (this run's is one more)
    def same(text: str, out: str) -> str:
        return re.sub(r"scored \d+ time\(s\)", "scored N time(s)", text.replace(out, "OUT"))

    results = [
        json.loads(storage.read_text(f"{s3_bucket}/eval/results.json")),
        json.loads((tmp_path / "eval" / "results.json").read_text()),
    ]
    assert results[0]["aligned"] == results[1]["aligned"] and results[0]["samples"] == results[1]["samples"]
    for name in ("responses.jsonl", "report/report.md"):
        a = same(storage.read_text(f"{s3_bucket}/eval/{name}"), f"{s3_bucket}/eval")
        assert a == same((tmp_path / "eval" / name).read_text(), str(tmp_path / "eval")), name
