"""The documented cluster path on 127.0.0.1: two Ray nodes whose Python has every dependency but not
rayalign, a real S3 API as the only shared storage, and
`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/pipeline.py
rayjobs/configs/pipeline-tiny.yaml run_dir=s3://...`.

The environment without rayalign: a fresh `venv` (no pip, no system site-packages) whose
site-packages holds one `.pth` line naming the test venv's site-packages. Python appends that folder
to `sys.path` but does not process the `.pth` files inside it, so the editable install's
`__editable__.rayalign-*.pth` is never read and `import rayalign` fails, while ray, torch,
transformers, ... import as on a cluster image without rayalign. `ray` and `python` on the nodes'
PATH are that venv's; PYTHONPATH is unset. The job gets the package only from the runtime env's
`py_modules` (the working dir upload excludes `src/`).

The second node carries a custom resource that every dataset stage's actors request
(`pool.resources`), so those actors must run there; the test checks its logs for them. Nodes live
in their own temp dirs and are stopped by signalling exactly the processes this test started.

Both nodes reach a model hub on 127.0.0.1 (tests/hub_server.py: `HF_ENDPOINT`, the token in each
node's own environment) and each has its own `HF_HOME`: a stage on a hub id downloads the model once
on each node. One cluster serves every test of this module.

Loopback only: the head runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (every listener on
127.0.0.1). Ray 2.60 refuses to join a second node in that mode, and in the other mode rewrites
`127.0.0.1` to the machine's interface address; the second node therefore joins as a host name
that resolves to 127.0.0.1 (the test is skipped where none does). Every connection stays on
127.0.0.1; that node's raylet listens on the wildcard address (it binds to the node's IP only when
given an IP literal), which is why its ports come from this test's own free-port picks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from hub_server import COMMIT, MODEL_FILES, TOKEN, file_gets, serve_hub, vllm_loadable_tiny
from ray_job_helpers import ray_job_submit
from ray_ports import free_port, listener_flags
from rayalign import storage

REPO = Path(__file__).resolve().parents[2]
RESOURCE = "rayalign_stage"
HUB_SLOT = "rayalign_hub_slot"  # one on each node: a two-actor pool asking for one runs on both
# every dataset stage of pipeline-tiny.yaml runs on a one-actor pool that needs the second node
POOL_STAGES = ("rewrite", "pas", "sample", "clair", "reference", "heldout")
TINY_INPUTS = {"rewrite": "corpus.jsonl", "pas": "chat.jsonl", "sample": "prompts.jsonl", "heldout": "pairs.jsonl"}

pytestmark = [pytest.mark.slow]


_WORKER_BASES = random.sample(range(12000, 31000, 1000), 8)


def python_without_rayalign(root: Path) -> Path:
    """A venv that sees the test venv's packages but not its `.pth` files (so not rayalign)."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)  # type: ignore[attr-defined]
    site = Path(
        subprocess.check_output(
            [str(root / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (root / "bin" / "ray").write_text(
        f"#!{root}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n"
    )
    (root / "bin" / "ray").chmod(0o755)
    return root / "bin"


def node_env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{bin_dir}:/usr/bin:/bin",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="disabled",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONNOUSERSITE="1",
    )
    return env


def loopback_alias() -> str:
    """A host name other than `localhost` that resolves to 127.0.0.1 (Ray leaves it as it is)."""
    for name in (socket.gethostname(), "localhost.localdomain", "localhost4", "ip6-localhost"):
        try:
            if name not in ("localhost", "127.0.0.1") and socket.gethostbyname(name) == "127.0.0.1":
                return name
        except OSError:
            continue
    pytest.skip("no host name other than `localhost` resolves to 127.0.0.1 here (needed for a loopback-only 2nd node)")


def ray_start(
    bin_dir: Path, env: dict, temp_dir: str, log: Path, *args: str, node_ip: str = "127.0.0.1"
) -> subprocess.Popen:
    # this node's worker ports: below the kernel's ephemeral range (32768+), where `free_port` picks
    # the components' ports, and a block no other node of this test uses
    base = _WORKER_BASES.pop()
    ports = listener_flags(head=False)
    cmd = [
        str(bin_dir / "ray"),
        "start",
        "--block",
        "--node-ip-address",
        node_ip,
        "--temp-dir",
        temp_dir,
        "--disable-usage-stats",
        f"--min-worker-port={base}",
        f"--max-worker-port={base + 999}",
        *ports,
        *args,
    ]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[tuple[subprocess.Popen, str]], grace_s: float = 5) -> None:
    """SIGTERM every node at once, give them `grace_s` together, then SIGKILL what is left of them
    (any process whose command line names a node's temp dir). `ray start --block` took the whole
    20 s it was once given, one node after the other: nothing here needs a graceful stop."""
    for proc, _ in procs:
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
    dirs = [temp_dir for _, temp_dir in procs]
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmdline = (d / "cmdline").read_bytes().decode(errors="replace")
                if any(temp_dir in cmdline for temp_dir in dirs):
                    os.kill(int(d.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"ray exited early: {log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.time() < deadline, f"{url} did not answer in {timeout} s"
            time.sleep(0.5)


def wait_for_nodes(dashboard: str, n: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, f"ray node exited early: {log.read_text()[-3000:]}"
        try:  # the state API may drop a connection while the dashboard is still starting
            with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=20", timeout=10) as r:
                if r.read().decode().count('"ALIVE"') >= n:
                    return
        except OSError as e:
            error: OSError | None = e
        else:
            error = None
        assert time.time() < deadline, f"{n} nodes did not register in {timeout} s (last error: {error!r})"
        time.sleep(1)


@pytest.fixture(scope="module")
def hub_model(tiny_model_path, tmp_path_factory) -> Path:
    """The folder the hub serves: a tiny random Llama whose greedy answers differ by prompt."""
    return vllm_loadable_tiny(tiny_model_path, tmp_path_factory.mktemp("hub_model"))


@pytest.fixture(scope="module")
def hub(hub_model):
    with serve_hub(hub_model) as served:
        yield served


@pytest.fixture(scope="module")
def two_nodes(s3_server, hub, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two_nodes")
    bin_dir = python_without_rayalign(tmp_path / "venv")
    env = node_env(bin_dir)
    # online, as a cluster is: the hub on 127.0.0.1, the token in the nodes' own environment, and
    # each node its own hub cache (nodes share nothing but object storage)
    del env["HF_HUB_OFFLINE"]
    env.update(HF_ENDPOINT=hub[0], HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1")
    homes = {"head": tmp_path / "hf-head", "node": tmp_path / "hf-node"}
    probe = subprocess.run([str(bin_dir / "python"), "-c", "import rayalign"], env=env, capture_output=True)
    assert probe.returncode != 0 and b"No module named 'rayalign'" in probe.stderr
    subprocess.run([str(bin_dir / "python"), "-c", "import ray, torch, transformers, pyarrow"], env=env, check=True)

    head_dir = tempfile.mkdtemp(prefix="rayalign-h-", dir="/tmp")
    node_dir = tempfile.mkdtemp(prefix="rayalign-n-", dir="/tmp")
    gcs, dash = free_port(), free_port()
    head = ray_start(
        bin_dir,
        {**env, "HF_HOME": str(homes["head"])},
        head_dir,
        tmp_path / "head.log",
        "--head",
        "--port",
        str(gcs),
        "--num-cpus",
        "1",
        "--include-dashboard=true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        f"--ray-client-server-port={free_port()}",
        "--resources",
        json.dumps({HUB_SLOT: 1}),
    )
    procs = [(head, head_dir)]
    try:
        wait_for(f"http://127.0.0.1:{dash}/api/version", head, tmp_path / "head.log")
        # Ray refuses to join a node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the head's loopback
        # switch), and with it on it rewrites "127.0.0.1"/"localhost" to the machine's interface
        # address; a host name that resolves to 127.0.0.1 keeps the joining node on loopback.
        alias = loopback_alias()
        node = ray_start(
            bin_dir,
            {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "HF_HOME": str(homes["node"])},
            node_dir,
            tmp_path / "node.log",
            "--address",
            f"{alias}:{gcs}",
            "--num-cpus",
            "2",
            "--resources",
            json.dumps({RESOURCE: 8, HUB_SLOT: 1}),
            node_ip=alias,
        )
        procs.append((node, node_dir))
        wait_for_nodes(f"http://127.0.0.1:{dash}", 2, node, tmp_path / "node.log")
        yield {"bin": bin_dir, "env": env, "dashboard": f"http://127.0.0.1:{dash}", "node_dir": node_dir,
               "hf_homes": homes}  # fmt: skip
    finally:
        stop(list(reversed(procs)))
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(node_dir, ignore_errors=True)


def job_api(dashboard: str, path: str) -> dict:
    with urllib.request.urlopen(f"{dashboard}/api/jobs/{path}", timeout=10) as r:
        return json.loads(r.read())


def job_logs(dashboard: str, job_id: str) -> str:
    return job_api(dashboard, f"{job_id}/logs").get("logs", "")


def wait_for_job(dashboard: str, job_id: str, timeout: float) -> str:
    """The job's final status; on a time-out, fail with the tail of its log."""
    deadline = time.time() + timeout
    while True:
        status = job_api(dashboard, job_id)["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if time.time() > deadline:
            pytest.fail(f"job still {status} after {timeout} s:\n{job_logs(dashboard, job_id)[-6000:]}")
        time.sleep(2)


def submit(two_nodes: dict, job_id: str, *entrypoint: str) -> None:
    """`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- ENTRYPOINT`."""
    cmd = [
        str(two_nodes["bin"] / "ray"),
        "job",
        "submit",
        "--address",
        two_nodes["dashboard"],
        "--no-wait",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--runtime-env",
        "cluster/runtime_env.yaml",
        "--",
        *entrypoint,
    ]
    ray_job_submit(cmd, two_nodes["env"])


def overrides(bucket: str) -> list[str]:
    out = [f"run_dir={bucket}/run"]
    for stage, name in TINY_INPUTS.items():
        out.append(f"stages.{stage}.config.inputs=[{bucket}/tiny/{name}]")
    for stage in POOL_STAGES:
        out += [
            f"stages.{stage}.config.pool.workers=1",
            f"stages.{stage}.config.pool.num_cpus=0.5",
            f"stages.{stage}.config.pool.resources={{{RESOURCE}: 1}}",
        ]
    return out


@pytest.mark.timeout(600)
def test_pipeline_job_on_two_nodes_without_rayalign_installed(two_nodes, s3_bucket, tmp_path):
    for name in TINY_INPUTS.values():
        storage.write_bytes(f"{s3_bucket}/tiny/{name}", (REPO / "rayjobs" / "data" / "tiny" / name).read_bytes())
    job_id = f"rayalign-two-nodes-{os.getpid()}-{int(time.time())}"
    submit(
        two_nodes, job_id, "python", "rayjobs/pipeline.py", "rayjobs/configs/pipeline-tiny.yaml", *overrides(s3_bucket)
    )
    status = wait_for_job(two_nodes["dashboard"], job_id, timeout=480)
    log = job_logs(two_nodes["dashboard"], job_id)
    (tmp_path / "job.log").write_text(log)
    assert status == "SUCCEEDED", log[-6000:]

    summary = storage.read_json(f"{s3_bucket}/run/summary.json")
    assert summary is not None, "summary.json is not in the bucket"
    assert summary["status"] == "complete"
    final = summary["final_model"]
    assert final.startswith(f"{s3_bucket}/run/"), final
    assert storage.exists(storage.join(final, "config.json"))
    assert storage.glob(final, "*.safetensors"), "the final model's weights are not in the bucket"
    # every dataset stage's actors ran on the second node (the only one with the resource)
    logs = Path(two_nodes["node_dir"]).glob("session_*/logs/*")
    assert any("_ShardActor" in p.read_text(errors="replace") for p in logs if p.is_file())
    assert not (REPO / "s3:").exists(), "a URI became a local folder"


def job_actor_nodes(dashboard: str, job_id: str) -> set[str]:
    """The nodes that ran the job's dataset stage actors (Ray's state API; an actor the pool gave up
    before it was placed has no node)."""
    ray_job = job_api(dashboard, job_id)["job_id"]
    with urllib.request.urlopen(f"{dashboard}/api/v0/actors?limit=1000&detail=1", timeout=30) as r:
        actors = json.loads(r.read())["data"]["result"]["result"]
    mine = [a for a in actors if a.get("job_id") == ray_job and "_ShardActor" in a.get("class_name", "")]
    return {a["node_id"] for a in mine if a.get("node_id")}


@pytest.mark.timeout(300)
def test_a_hub_model_downloads_once_on_each_node_into_its_own_hub_cache(two_nodes, hub, hub_model, s3_bucket, tmp_path):
    """`model: org/name` in a stage whose two actors run one on each node: each node downloads the
    model into its own HF_HOME exactly once (every model file is served twice in all, and both
    caches hold it), with the token from its own environment, and every row equals the same stage
    run here on the local folder the hub serves."""
    from rayalign.data.shards import read_dataset
    from rayalign.stages import run_stage

    _, seen = hub
    before = len(seen)
    prompts = REPO / "rayjobs" / "data" / "tiny" / "prompts.jsonl"
    storage.write_bytes(f"{s3_bucket}/prompts.jsonl", prompts.read_bytes())
    job_id = f"rayalign-hub-{os.getpid()}-{int(time.time())}"
    # the driver waits until both actors are up (each downloads as it starts) before handing out
    # shards: otherwise the first one up may finish the 4 shards before the other is placed
    submit(two_nodes, job_id, "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S=200", "python", "rayjobs/sample.py",
           "tests/cluster/hub_sample.yaml",
           f"inputs=[{s3_bucket}/prompts.jsonl]", f"output={s3_bucket}/sample")  # fmt: skip
    status = wait_for_job(two_nodes["dashboard"], job_id, timeout=240)
    log = job_logs(two_nodes["dashboard"], job_id)
    assert status == "SUCCEEDED", log[-6000:]
    assert len(job_actor_nodes(two_nodes["dashboard"], job_id)) == 2, "the stage's actors did not run on both nodes"

    requests = seen[before:]
    assert requests and all(auth == f"Bearer {TOKEN}" for _, _, auth in requests)
    gets = file_gets(requests)
    assert set(MODEL_FILES) <= set(gets) and all(gets.count(f) == 2 for f in gets), sorted(gets)
    for home in two_nodes["hf_homes"].values():
        snapshot = home / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / COMMIT
        assert (snapshot / "model.safetensors").exists(), f"{home} holds no copy"
    assert TOKEN not in log

    # the same stage here, in-process, on the folder the hub serves: the same rows
    ref = run_stage(
        "sample",
        str(REPO / "tests" / "cluster" / "hub_sample.yaml"),
        [f"inputs=[{prompts}]", f"output={tmp_path / 'ref'}", f"model={hub_model}", "pool.workers=0"],
    )
    rows = read_dataset(f"{s3_bucket}/sample").to_pylist()
    assert ref.counts.ok == 8 and len(rows) == 8
    assert len({r["response"] for r in rows}) > 1  # the prompts' answers differ
    assert [(r["id"], r["response"]) for r in rows] == [
        (r["id"], r["response"]) for r in read_dataset(tmp_path / "ref").to_pylist()
    ]
