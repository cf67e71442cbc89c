"""Shared fixtures: one local Ray cluster per test session (loopback, 2 CPUs), tiny models."""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the test box's facts (the product sets neither): no hub, and vLLM engines (their engine core
# and tensor-parallel workers inherit this environment) advertise loopback only
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
# every test Ray node (each worker's cluster, the `ray start` nodes of the cluster tests): its log
# monitor looks for new log files every 0.5 s instead of ten times a second (CPU time sampled per
# process over full runs on 2 cores: the log monitors' share of one core fell from 3.8% to 2.4%)
os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
# `make test` runs two pytest-xdist workers: each gets its own Ray temp dir, so a bare `ray.init()`
# in one worker never finds (and joins) a cluster the other worker started
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("RAY_TMPDIR", f"/tmp/rayalign-{os.environ['PYTEST_XDIST_WORKER']}")
    # an earlier run's Ray sessions (logs, spilled objects) go: the disk holds one run's at most
    shutil.rmtree(os.path.join(os.environ["RAY_TMPDIR"], "ray"), ignore_errors=True)
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)

TINY = "tiny-random:llama"
# seconds per test file (setup + call + teardown) from an earlier full run, written by
# `pytest --record-durations tests/durations.json`: `make test` hands whole files to its two
# processes longest first, so that no long file starts last and leaves one process working alone
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser):
    parser.addoption(
        "--record-durations",
        metavar="PATH",
        help="write each test file's seconds (setup + call + teardown) to PATH as JSON, for tests/durations.json",
    )


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def longest_files_first(items: list) -> None:
    """Reorder `items` in place: files by their recorded seconds (longest first), then files with no
    record in collection order; the tests of a file keep their order."""
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(file_of(item.nodeid), i)
    items.sort(key=lambda item: (-seconds.get(file_of(item.nodeid), 0.0), first_seen[file_of(item.nodeid)]))


_file_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _file_seconds[file_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session):
    path = session.config.getoption("record_durations")
    if path and not hasattr(session.config, "workerinput"):  # the controller gets every worker's reports
        ranked = sorted(_file_seconds.items(), key=lambda kv: -kv[1])
        Path(path).write_text(json.dumps({f: round(s, 1) for f, s in ranked}, indent=1) + "\n")


def pytest_collection_modifyitems(config, items):
    longest_files_first(items)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster shared by every test that asks for it (started once).

    The S3 test server starts first, so the cluster's workers inherit its endpoint and keys (an
    object-storage test that runs after the cluster started would otherwise reach out to AWS)."""
    import ray

    from rayalign.raycluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from rayalign.models.loader import resolve_model_path

    return resolve_model_path(TINY)


@pytest.fixture(scope="session")
def chat_packed(tmp_path_factory, tiny_model_path) -> str:
    from rayalign.data.prepare import PrepareConfig, run_prepare
    from rayalign.data.shards import PoolConfig

    out = tmp_path_factory.mktemp("chat_packed")
    run_prepare(
        PrepareConfig(
            kind="chat",
            inputs=[str(Path(__file__).resolve().parents[1] / "rayjobs/data/chat.jsonl")],
            output=str(out),
            model=TINY,
            max_length=128,
            seq_len=128,
            pool=PoolConfig(workers=0),
        ),
        log=lambda *_: None,
    )
    return str(out)


@pytest.fixture(scope="session")
def tokenizer():
    from rayalign.models.loader import load_tokenizer

    return load_tokenizer(TINY)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's threaded server) on 127.0.0.1, for object-storage tests.

    Sets the standard AWS variables (endpoint, dummy credentials) in this process, so pyarrow's
    S3 filesystem and child processes started afterwards (Ray workers, `rayalign` subprocesses)
    talk to it. Yields the endpoint URL. Tests create their own bucket with `s3_bucket`.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket for one test; returns `s3://<bucket>`."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
