"""`ray job submit` from a test, against a head that may have just started."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ray_job_submit(cmd: list[str], env: dict[str, str], timeout: float = 120) -> str:
    """Run the `ray job submit ...` command line `cmd` from the repository root and return its
    output (stdout + stderr); fails the test unless it exits 0. The head's job agent registers a few
    seconds after the dashboard answers: until then the CLI answers "No available agent", and the
    command is run again (for up to ~30 s)."""
    for _ in range(30):
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        log = out.stdout + out.stderr
        if "No available agent" not in log:
            break
        time.sleep(1)
    assert out.returncode == 0, log[-4000:]
    return log
