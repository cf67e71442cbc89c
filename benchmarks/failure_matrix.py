"""Failure matrix from real runs: each fault injected from outside the production code, each outcome
measured (rows in, rows out, duplicates), written to benchmarks/results/<date>-failure-matrix.md.

    python benchmarks/failure_matrix.py [--rate 0.2] [--seed 25]

Runs here, on loopback only: a real S3 API (moto's server on 127.0.0.1) behind the fault-injecting
proxy of tests/reliability/faulty_proxy.py; a small tmpfs (needs root: `mount`); the tiny model's
training loop for torn checkpoints; multi-node clusters of real raylets on 127.0.0.1 (Ray's
`cluster_utils.Cluster`, driven by tests/reliability/node_loss_jobs.py) for whole-node loss. The rows
of the second table are asserted by the tests named there and are not re-run by this script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHAT = ROOT / "rayjobs" / "data" / "chat.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "tests" / "train"))

from faulty_proxy import FaultyProxy  # noqa: E402  (the tests' proxy: one implementation)
from report import save_report  # noqa: E402  (benchmarks/report.py: the results header)

from rayalign import storage  # noqa: E402
from rayalign.data.prepare import PrepareConfig, run_prepare  # noqa: E402
from rayalign.data.shards import MANIFEST, PROGRESS, read_dataset  # noqa: E402


def prepare_cfg(inputs: list[str], out: str, model: str = "tiny-random:llama") -> PrepareConfig:
    return PrepareConfig(
        kind="chat",
        inputs=inputs,
        output=out,
        model=model,
        max_length=128,
        seq_len=128,
        pool={"workers": 0, "shard_rows": 24},
    )


def rows_out(out: str) -> tuple[int, int, int]:
    """(ok rows found in the output, quarantined rows found, duplicated ids) of a prepared dataset."""
    ids = [d for row in read_dataset(out, columns=["doc_ids"]).column("doc_ids").to_pylist() for d in row]
    quarantine = 0
    qdir = storage.join(out, "quarantine")
    keys: list[tuple[str, int]] = []
    if storage.is_dir(qdir):
        import pyarrow.parquet as pq

        for f in storage.glob(qdir, "shard-*.parquet"):
            fs, inner = storage.filesystem(f)
            t = pq.read_table(inner, filesystem=fs, columns=["source", "index"])
            keys += list(zip(t.column("source").to_pylist(), t.column("index").to_pylist()))
            quarantine += t.num_rows
    dupes = (len(ids) - len(set(ids))) + (len(keys) - len(set(keys)))
    return len(ids), quarantine, dupes


def s3_server() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    return server, endpoint


def flaky_prepare(endpoint: str, rate: float, seed: int, work: Path) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="matrix")
    client.put_object(Bucket="matrix", Key="in/chat.jsonl", Body=CHAT.read_bytes())
    with FaultyProxy(endpoint, rate=rate, seed=seed) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        t0 = time.monotonic()
        res = run_prepare(prepare_cfg(["s3://matrix/in/chat.jsonl"], "s3://matrix/out"), log=lambda s: None)
        secs = time.monotonic() - t0
        ok, quarantined, dupes = rows_out("s3://matrix/out")
        faults = ", ".join(f"{k} {v}" for k, v in sorted(proxy.counts.items()))
        requests = proxy.requests
    open_uploads = len(client.list_multipart_uploads(Bucket="matrix").get("Uploads", []))
    c = res.counts
    return [
        f"| object store: {rate:.0%} of {requests} requests faulted ({faults}) | `prepare` s3:// → s3:// "
        f"(chat sample) | completes in {secs:.1f} s; counts {c.in_} = {c.ok} + {c.quarantined}; "
        f"open multipart uploads {open_uploads} | {c.in_} | {ok} + {quarantined} | {dupes} |"
    ]


def failed_writer(endpoint: str) -> list[str]:
    import boto3

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="writer")
    left = []
    for size in (1000, 25 << 20):
        try:
            with storage.open_output(f"s3://writer/torn-{size}.bin") as fh:
                fh.write(os.urandom(size))
                raise RuntimeError("writer failed")
        except RuntimeError:
            pass
        left.append(storage.exists(f"s3://writer/torn-{size}.bin"))
    uploads = len(client.list_multipart_uploads(Bucket="writer").get("Uploads", []))
    return [
        f"| writer raises mid-write (1 KB and 25 MiB objects) | any object-store write | objects left "
        f"{sum(left)}, open multipart uploads {uploads} | n/a | n/a | n/a |"
    ]


def permanent(endpoint: str) -> list[str]:
    out = []
    with FaultyProxy(endpoint, rate=0.0) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        for name, setup, uri in (
            ("missing bucket", lambda: None, "s3://no-such-bucket-matrix/run/stage.json"),
            ("403 AccessDenied on every request", lambda: setattr(proxy, "deny", True), "s3://writer/x.json"),
        ):
            setup()
            before, t0 = proxy.requests, time.monotonic()
            try:
                storage.write_json(uri, {"a": 1})
                outcome = "no error (wrong)"
            except storage.StorageError as e:
                outcome = f"`StorageError` after {time.monotonic() - t0:.2f} s, {proxy.requests - before} request(s): {str(e)[:140]}…"
            out.append(f"| {name} | any object-store call | {outcome} | n/a | n/a | n/a |")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    return out


def full_disk(work: Path) -> list[str]:
    clean = work / "clean"
    res = run_prepare(prepare_cfg([str(CHAT)], str(clean)), log=lambda s: None)
    total = sum(f.stat().st_size for f in clean.rglob("*") if f.is_file())
    disk = work / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={total // 2}", "tmpfs", str(disk)], capture_output=True)
    if done.returncode:
        return [
            f"| local disk full | `prepare` | not run: mounting a tmpfs failed ({done.stderr.decode().strip()}) | | | |"
        ]
    try:
        out = disk / "out"
        try:
            run_prepare(prepare_cfg([str(CHAT)], str(out)), log=lambda s: None)
            error = "no error (wrong)"
        except storage.DiskFullError as e:
            error = str(e).replace(str(work), "…")[:160]
        markers = len(list((out / PROGRESS).glob("*.json")))
        temps = len([f for f in out.rglob("*.tmp")])
        half = sum(1 for m in (out / PROGRESS).glob("*.json") if not (out / "data" / f"{m.stem}.parquet").exists())
        subprocess.run(["mount", "-o", f"remount,size={total * 4}", str(disk)], check=True)
        again = run_prepare(prepare_cfg([str(CHAT)], str(out)), log=lambda s: None)
        ok, quarantined, dupes = rows_out(str(out))
        same = again.counts == res.counts and (out / MANIFEST).exists()
        c = again.counts
        return [
            f"| local disk full (tmpfs at half the output size), then grown | `prepare` (local output) | "
            f"stops: `{error}…`; {markers} shard(s) committed, {half} half-committed, {temps} temp files; "
            f"re-run after growing resumes, counts equal a clean run: {same} | {c.in_} | {ok} + {quarantined} | {dupes} |"
        ]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def torn_checkpoints(work: Path) -> list[str]:
    from train_helpers import base_config

    from rayalign.train import checkpoint as ckpt
    from rayalign.train.config import TrainConfig
    from rayalign.train.launcher import launch
    from rayalign.train.metrics import read_metrics

    data = work / "packed"
    run_prepare(prepare_cfg([str(CHAT)], str(data)), log=lambda s: None)
    common: dict[str, Any] = dict(max_steps=5, optim={"warmup_steps": 1}, checkpoint={"every": 2, "keep_last": 3})
    launch(TrainConfig.model_validate(base_config(work / "full", str(data), **common)))
    launch(TrainConfig.model_validate(base_config(work / "part", str(data), stop_at_step=4, **common)))
    full = {r["step"]: r["loss"] for r in read_metrics(work / "full")}

    def shard(d: Path) -> Path:
        return next(p for p in sorted((d / "dcp").iterdir()) if p.suffix == ".distcp")

    def truncate(d: Path) -> None:
        f = shard(d)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def lose(d: Path) -> None:
        (d / "trainer.pt").unlink()

    def old_marker(d: Path) -> None:
        (d / ckpt.COMPLETE).write_text("4")
        f = shard(d)
        f.write_bytes(f.read_bytes()[:100])

    rows = []
    for name, corrupt in (
        ("truncated DCP shard", truncate),
        ("lost file (trainer.pt)", lose),
        ("marker without a file list over a torn shard", old_marker),
    ):
        out = work / f"torn-{corrupt.__name__}"
        shutil.copytree(work / "part", out)
        corrupt(out / "checkpoints" / "step-000004")
        handler = _Collect()
        logging.getLogger("rayalign.train").addHandler(handler)
        chosen = ckpt.latest_checkpoint(out)
        launch(TrainConfig.model_validate(base_config(out, str(data), **common)))
        logging.getLogger("rayalign.train").removeHandler(handler)
        got = {r["step"]: r["loss"] for r in read_metrics(out)}
        diff = max(abs(got[s] - full[s]) for s in (3, 4, 5))
        warning = next((w for w in handler.messages if "is torn" in w), "no warning (wrong)").replace(str(work), "…")
        rows.append(
            f"| torn checkpoint: {name} at step 4 | `sft` resume | resumed from {Path(chosen or '-').name}; "
            f"`{warning[:150]}`; steps 3-5 max abs loss diff vs uninterrupted {diff:.1e} | 5 steps | "
            f"{len(got)} steps | {len(got) - len(set(got))} |"
        )
    return rows


def eval_through_faults(endpoint: str, rate: float, seed: int, work: Path) -> list[str]:
    """The eval stage writing into the bucket through the proxy, against a clean local run."""
    import json
    import re

    import boto3

    from rayalign.eval.stage import EvalConfig, run_eval

    def run(output: str):
        cfg = EvalConfig(model="tiny-random:llama", output=output, limit=8, params={"max_tokens": 12})
        return run_eval(cfg, log=lambda *_: None)

    def norm(text: str, out: str) -> str:  # the report names its folder and counts the suite's reads
        return re.sub(r"scored \d+ time\(s\)", "scored N time(s)", text.replace(out, "OUT"))

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="evalmatrix")
    with FaultyProxy(endpoint, rate=rate, seed=seed) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        t0 = time.monotonic()
        remote = run("s3://evalmatrix/eval")
        secs = time.monotonic() - t0
        faults = ", ".join(f"{k} {v}" for k, v in sorted(proxy.counts.items()))
        requests = proxy.requests
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    local = run(str(work / "eval"))
    same = remote.metrics == local.metrics and all(
        norm(storage.read_text(f"s3://evalmatrix/eval/{n}"), "s3://evalmatrix/eval")
        == norm((work / "eval" / n).read_text(), str(work / "eval"))
        for n in ("responses.jsonl", "report/report.md")
    )
    rows = [json.loads(x) for x in storage.read_text("s3://evalmatrix/eval/responses.jsonl").splitlines()]
    ids = [r["id"] for r in rows]
    return [
        f"| object store: {rate:.0%} of {requests} requests faulted ({faults}) | `eval` (tiny model, 8 suite "
        f"prompts) writing answers, results, report and plots to s3:// | completes in {secs:.1f} s; metrics, "
        f"answers and report.md equal a clean local run: {same} | 8 prompts | {len(ids)} answers | "
        f"{len(ids) - len(set(ids))} |"
    ]


def generation_preemption(work: Path) -> list[str]:
    """SIGTERM to a `sample` stage's one actor (3 shards in flight) once 2 shards are committed."""
    import signal

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "generate"))
    from test_shards_in_flight import prompts_file, sample_data

    from rayalign.raycluster import ensure_ray
    from rayalign.stages import run_stage
    from shard_kill_helpers import run_and_kill_one_actor

    ensure_ray(num_cpus=2)
    inp = prompts_file(work / "gen-prompts.jsonl", 21)
    out = work / "gen-ray"
    result, _, done_at_kill = run_and_kill_one_actor(
        lambda: run_stage("sample", data=sample_data(inp, out, 3, workers=1, max_tokens=16)),
        out, after_shards=2, start_s=300, finish_s=300, sig=signal.SIGTERM,
    )  # fmt: skip
    local = run_stage("sample", data=sample_data(inp, work / "gen-local", 1, max_tokens=16))
    same_counts = local.counts == result.counts
    rows, ref = read_dataset(str(out)).to_pylist(), read_dataset(str(work / "gen-local")).to_pylist()
    ids = [r["id"] for r in rows]
    planned = result.details["shards"]
    c = result.counts
    return [
        f"| spot notice: SIGTERM to the generation actor after {done_at_kill} of {planned} shards, 3 in flight | "
        f"`sample` (hf, tiny model) on a 1-actor pool | actor restarted, its shards run again; counts "
        f"{c.in_} = {c.ok} + {c.quarantined}; rows, texts and counts equal an uninterrupted run: {rows == ref and same_counts} | "
        f"{c.in_} | {c.ok} + {c.quarantined} ({len(ids)} samples) | {len(ids) - len(set(ids))} |"
    ]


def node_loss_train(work: Path, data: Path) -> list[str]:
    """Ray Train on two worker nodes; node 2's raylet, agents and worker SIGKILLed after step 2; a
    replacement node joins (tests/reliability/node_loss_jobs.py, in its own interpreter and cluster)."""
    out = run_job("train", work / "node-loss", str(data))
    if out["error"]:
        return [f"| whole node lost mid-run | `sft` on 2 nodes | failed: {out['error'][:200]} | | | |"]
    diff = max(abs(a - b) for a, b in zip(out["losses"], out["reference"], strict=True))
    nodes = {v: k for k, v in out["nodes"].items()}
    before = "+".join(sorted(nodes[n] for n in out["workers_before"]))
    after = "+".join(sorted(nodes[n] for n in out["workers_after"]))
    steps = out["steps"]
    return [
        f"| whole node lost: node 2's {', '.join(out['killed'])} SIGKILLed after step {out['killed_after_step']}, "
        f"a replacement node joins | `sft`, 2 Ray Train workers on nodes {before} | restarted on nodes {after} "
        f"from the step-{out['resumed_at']} checkpoint, finished {out['kill_to_end_s']:.0f} s after the kill "
        f"(run {out['run_s']:.0f} s, one-process reference {out['reference_s']:.0f} s); "
        f"max abs loss diff vs one uninterrupted process {diff:.1e}; same rows per step: {out['samples']} | "
        f"{len(out['reference'])} steps | {len(set(steps))} steps | {len(steps) - len(set(steps))} |"
    ]


def node_loss_serve(work: Path, colocated: bool = False) -> list[str]:
    """A serving replica's node SIGKILLed under load from 4 `openai` clients; a replacement joins.
    The engine replica alone (the ingress on the head), or (`colocated`) the one replica holding the
    ingress and the engine (`colocate_engine`)."""
    flag = ["--colocated"] if colocated else []
    out = run_job("serve", str(work / ("node-loss-colocated" if colocated else "node-loss-serve")), *flag)
    what = "the replica holding ingress and engine (`colocate_engine`)" if colocated else "the engine replica"
    if out.get("error"):
        return [f"| whole node lost under load: {what} | `serve` | failed: {out['error'][:200]} | | | |"]
    statuses: dict[str, int] = {}
    for _, s in out["after"]:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    answered = ", ".join(f"{n}× {s}" for s, n in sorted(statuses.items()))
    bare = [t for t, s in out["after"] if s == 500]
    plain = f" (the 500s, {min(bare):.1f}-{max(bare):.1f} s after the kill, are Serve's proxy's)" if bare else ""
    return [
        f"| whole node lost under load: {what}'s node ({', '.join(out['killed'])}) SIGKILLed, "
        f"a replacement node joins | `serve` (hf, tiny model), 4 `openai` clients | answers after the kill: "
        f"{answered}{plain}; first 200 from the restarted replica {out['first_ok_after_s']:.1f} s after the kill; "
        f"replica on the new node: {out['replica_moved']} | {out['before'] + len(out['after'])} requests | "
        f"{out['before'] + len(out['after'])} answers | n/a |"
    ]


def run_job(*args: str, timeout: float = 400) -> dict:
    """A scenario of tests/reliability/node_loss_jobs.py in a fresh interpreter: its RESULT line."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT / "src")
    jobs = ROOT / "tests" / "reliability" / "node_loss_jobs.py"
    run = subprocess.run([sys.executable, str(jobs), *args], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    if run.returncode or not lines:
        return {"error": (run.stdout + run.stderr)[-300:].replace("\n", " ").replace("|", "/")}
    return json.loads(lines[-1][len("RESULT ") :])


TESTED = [
    ("≥1,000 hostile rows per kind", "`prepare`, `sample`", "tests/reliability/test_hostile_rows.py"),
    ("processor raises on some rows; rows Arrow cannot write", "any dataset stage", "tests/data/test_file_faults.py"),
    (
        "`SIGKILL` of the Ray Data shard actor mid-shard",
        "`prepare` on a 1-actor pool",
        "tests/cluster/test_actor_kill.py",
    ),
    (
        "`SIGKILL` of the stage process, resumed with another pool, output in S3",
        "`prepare`",
        "tests/cluster/test_shards_storage.py",
    ),
    (
        "`SIGKILL` of the pipeline driver mid-stage; its actors gone, CPUs free (Ray state API)",
        "`rayalign run` on a Ray head",
        "tests/pipeline/test_on_ray_head.py",
    ),
    (
        "`SIGKILL` of a `ray job`'s driver mid-stage, the same job submitted again: finished stage skipped, "
        "killed one resumed by shard, every row once; no actor of the dead job holds resources",
        "pipeline via `ray job submit --no-wait`",
        "tests/pipeline/test_on_ray_head.py",
    ),
    (
        "SIGTERM (spot notice) to a generation actor with 3 shards in flight: shards handed back, "
        "output equals an uninterrupted run, every row once",
        "`sample` on a 1-actor pool",
        "tests/reliability/test_generation_preemption.py",
    ),
    (
        "20% object-store faults while the eval stage writes answers, results, report and plots",
        "`eval` (output in S3)",
        "tests/reliability/test_flaky_object_store.py",
    ),
    (
        "SIGTERM (spot notice) to a training process: checkpoint within the grace, resumed = uninterrupted",
        "`rayalign sft`",
        "tests/reliability/test_preemption.py",
    ),
    (
        "20% object-store faults during DCP save and resume, model and data in the bucket",
        "`sft` (in-process)",
        "tests/reliability/test_flaky_object_store.py",
    ),
    ("`SIGKILL` of a Ray Train worker", "`sft` on 2 workers", "tests/train/test_ray_train.py"),
    (
        "every process of a worker node SIGKILLed mid-run, a replacement node joins",
        "`sft` on 2 nodes",
        "tests/reliability/test_node_loss.py",
    ),
    ("`SIGKILL` of `rayalign sft`, run folder in S3", "`sft`", "tests/train/test_train_object_storage.py"),
    ("`SIGKILL` of a serving replica under load", "`serve`", "tests/serve/test_serve_reliability.py"),
    (
        "every process of the engine replica's node SIGKILLed under load, a replacement node joins",
        "`serve`",
        "tests/reliability/test_node_loss.py",
    ),
    (
        "Serve stops the replicas (scale-down, redeploy, delete, node drain) with a stream in flight",
        "`serve`",
        "tests/reliability/test_serve_drain.py",
    ),
    ("2,000 hypothesis-generated hostile requests", "`serve` ingress", "tests/serve/test_http_fuzz.py"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=0.2, help="share of object-store requests faulted")
    ap.add_argument("--seed", type=int, default=25)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault(storage.BACKOFF_ENV, "0.05")
    server, endpoint = s3_server()
    work = Path(tempfile.mkdtemp(prefix="failure-matrix-"))
    try:
        rows = flaky_prepare(endpoint, args.rate, args.seed, work)
        rows += failed_writer(endpoint)
        rows += permanent(endpoint)
        rows += eval_through_faults(endpoint, args.rate, args.seed, work)
        rows += full_disk(work)
        rows += torn_checkpoints(work)
        rows += node_loss_train(work, work / "packed")
        rows += node_loss_serve(work)
        rows += node_loss_serve(work, colocated=True)
        rows += generation_preemption(work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("moto",))
    lines = [
        f"# Failure matrix — {dt.date.today()} — {platform.machine()}, {os.cpu_count()} CPUs",
        "",
        f"Fault rate {args.rate}, seed {args.seed}; S3 test server: {versions}.",
        "",
        "Every row below was measured by this run: the fault is injected from outside the production code",
        "(a fault-injecting proxy in front of a real S3 API on 127.0.0.1, a small tmpfs, damaged checkpoint",
        "files) and the outcome read back from what the stage wrote. Rows out = ok rows found in the output",
        "+ quarantined rows found; duplicates = ids found more than once.",
        "",
        "| fault | stage | outcome | rows in | rows out (ok + quarantined) | duplicates |",
        "|---|---|---|---:|---:|---:|",
        *rows,
        "",
        "Asserted by tests in `make test` (not re-run by this script):",
        "",
        "| fault | stage | test |",
        "|---|---|---|",
        *[f"| {f} | {s} | `{t}` |" for f, s, t in TESTED],
    ]
    save_report(lines, "failure-matrix")


if __name__ == "__main__":
    main()
