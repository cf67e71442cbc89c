"""Kill a Ray Data shard actor from outside while a dataset stage runs in a driver thread."""

from __future__ import annotations

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


def run_and_kill_one_actor(
    run: Callable[[], Any], out: Path, after_shards: int, start_s: float, finish_s: float
) -> tuple[Any, int, int]:
    """Run the stage `run` in a thread; once `after_shards` shards are committed under `out`, SIGKILL
    the (single) shard actor. Returns (the stage's result, the killed pid, shards done at the kill);
    fails if the stage ends before the kill, never gets going, errors or does not finish."""
    result: dict = {}

    def target():
        try:
            result["value"] = run()
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    driver = threading.Thread(target=target, daemon=True)
    driver.start()
    deadline = time.time() + start_s
    while len(finished_shards(out)) < after_shards or not shard_actor_pids():
        assert driver.is_alive(), f"the stage ended before the kill: {result}"
        assert time.time() < deadline, "the actor pool never got going"
        time.sleep(0.02)
    [victim] = shard_actor_pids()
    os.kill(victim, signal.SIGKILL)
    done_at_kill = len(finished_shards(out))
    driver.join(timeout=finish_s)
    assert not driver.is_alive(), "the stage did not finish after the kill"
    assert "error" not in result, result.get("error")
    assert victim not in shard_actor_pids()
    return result["value"], victim, done_at_kill
