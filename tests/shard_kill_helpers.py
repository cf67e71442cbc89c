"""Kill Ray processes from outside (a shard actor, or every process of a node) while a dataset stage
runs in a driver thread."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayalign.data.shards import finished_shards


def shard_actor_pids() -> list[int]:
    """PIDs of this test session's Ray Data actors running the shard runner (Ray titles them
    `ray::MapWorker(MapBatches(_ShardActor))`). Only descendants of this process count: the
    session's cluster was started from here, and other Ray clusters may run on the same machine."""
    import psutil

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("ray::") and "_ShardActor" in cmd:
            pids.append(proc.pid)
    return pids


def pids_with_env(*markers: str) -> list[int]:
    """PIDs of the processes (other than this one) whose environment holds every `NAME=value` in
    `markers`: how a test finds exactly the processes of a Ray node or cluster it started."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                environ = (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if all(m.encode() in environ for m in markers):
                pids.append(int(d.name))
    return pids


def run_and_kill(
    run: Callable[[], Any],
    out: Path,
    after_shards: int,
    start_s: float,
    finish_s: float,
    victims: Callable[[], list[int]],
    sig: int = signal.SIGKILL,
) -> tuple[Any, list[int], int]:
    """Run the stage `run` in a thread; once `after_shards` shards are committed under `out` and
    `victims()` names processes, send them all `sig` (SIGKILL) at once. Returns (the stage's result, the killed
    pids, shards done at the kill); fails if the stage ends before the kill, never gets going,
    errors or does not finish."""
    result: dict = {}

    def target():
        try:
            result["value"] = run()
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    driver = threading.Thread(target=target, daemon=True)
    driver.start()
    deadline = time.time() + start_s
    while len(finished_shards(out)) < after_shards or not (pids := victims()):
        assert driver.is_alive(), f"the stage ended before the kill: {result}"
        assert time.time() < deadline, "the stage never got going"
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    done_at_kill = len(finished_shards(out))
    driver.join(timeout=finish_s)
    assert not driver.is_alive(), "the stage did not finish after the kill"
    assert "error" not in result, result.get("error")
    return result["value"], pids, done_at_kill


def run_and_kill_one_actor(
    run: Callable[[], Any], out: Path, after_shards: int, start_s: float, finish_s: float, sig: int = signal.SIGKILL
) -> tuple[Any, int, int]:
    """`run_and_kill` of the (single) shard actor (`sig`: SIGKILL). Returns (the stage's result, the killed pid,
    shards done at the kill)."""

    def one_actor() -> list[int]:
        pids = shard_actor_pids()
        assert len(pids) <= 1, pids
        return pids

    value, [victim], done_at_kill = run_and_kill(run, out, after_shards, start_s, finish_s, one_actor, sig)
    assert victim not in shard_actor_pids()
    return value, victim, done_at_kill
