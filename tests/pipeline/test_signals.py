"""`rayalign run` stops on SIGTERM like on Ctrl-C: the running stage is recorded as failed (the next
run resumes it), the Ray cluster the run started is shut down, and no process it started survives
(checked in the process table)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RAYALIGN = str(Path(sys.executable).parent / "rayalign")


def children() -> dict[int, list[int]]:
    """parent pid → child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(d.name))
    return tree


def descendants(pid: int) -> dict[int, str]:
    """pid → start time (field 22 of /proc/PID/stat) of every process below `pid`."""
    tree, out, todo = children(), {}, [pid]
    while todo:
        for c in tree.get(todo.pop(), []):
            try:
                out[c] = Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[19]
            except OSError:
                continue
            todo.append(c)
    return out


def alive(pid: int, started: str) -> bool:
    """Still running (not a zombie) and the same process (not a reused pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == started


@pytest.mark.timeout(300)
def test_sigterm_stops_the_run_and_its_ray_cluster(tmp_path):
    run_dir = tmp_path / "run"
    doc = {
        "run_dir": str(run_dir),
        "defaults": {"model": "tiny-random:llama"},
        "stages": [
            {
                "name": "pairs",
                "stage": "prepare",
                "config": {
                    "kind": "pairs",
                    "inputs": [str(REPO / "rayjobs/data/pairs.jsonl")],
                    "pool": {"workers": 1, "num_cpus": 0.5, "shard_rows": 4},
                },
            }
        ],
    }  # ~57 shards on a Ray actor pool
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [RAYALIGN, "run", str(p)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    record = run_dir / "pairs" / "stage.json"
    deadline = time.time() + 200
    # wait until the stage runs on the cluster this run started (raylet, gcs, workers below it)
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the stage never started"
        procs = descendants(proc.pid)
        if record.exists() and len(procs) >= 3:
            break
        time.sleep(0.2)
    time.sleep(2)
    procs = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    logs = "".join(f.read_text(errors="replace") for f in (run_dir / "logs").glob("*.log"))
    assert proc.returncode == 130, (out + err + logs)[-3000:]
    assert "interrupted; run the same command again to resume" in err
    rec = json.loads(record.read_text())
    assert rec["status"] == "failed" and rec["error"].startswith("KeyboardInterrupt")
    deadline = time.time() + 30  # Ray's processes exit once their raylet is gone
    while (left := {pid for pid, t in procs.items() if alive(pid, t)}) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200] for pid in left]
