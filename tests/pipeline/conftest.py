"""A real Ray head started with `ray start --head --block` (dashboard + job server on 127.0.0.1).

It lives in its own `--temp-dir`, so it cannot collide with other clusters on this machine, and it
is stopped by signalling exactly the `ray start --block` process this fixture started (which drains
and stops its own children); any straggler whose command line names our temp dir is then killed by
PID. `ray stop` is never used: it would stop every cluster of this user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from ray_ports import free_port, listener_flags

VENV_BIN = Path(sys.executable).parent


def head_env() -> dict[str, str]:
    """Env for the head and for every client: loopback only, token auth disabled on both sides."""
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="disabled",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
    )
    env.pop("RAY_ADDRESS", None)
    return env


def _pids_under(temp_dir: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if temp_dir in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


@pytest.fixture(scope="module")  # only test_on_ray_head.py uses it: stop it when that module ends
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rayalign-head-", dir="/tmp")
    gcs_port, dash_port = free_port(), free_port()
    extra_ports = listener_flags(head=True)  # no fixed default port another cluster may hold
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 - open until the head is stopped below
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(gcs_port),
            "--num-cpus",
            "2",
            "--include-dashboard=true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash_port),
            "--temp-dir",
            temp_dir,
            "--disable-usage-stats",
            *extra_ports,
        ],
        env=head_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dashboard = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray head exited early: {(Path(temp_dir) / 'head.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{dashboard}/api/version", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("ray head's job server did not come up within 90 s") from None
                time.sleep(0.5)
        yield {"gcs": f"127.0.0.1:{gcs_port}", "dashboard": dashboard, "temp_dir": temp_dir, "env": head_env()}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # `ray start --block` used the whole 15 s once given; what is left is killed below
        except subprocess.TimeoutExpired:
            proc.kill()
        for pid in _pids_under(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
