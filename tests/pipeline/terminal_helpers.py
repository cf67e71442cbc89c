"""Run a command with its output on a pseudo-terminal (as a person's shell would) or on a pipe."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def run_in_pty(cmd: list[str], *, cwd, env: dict, timeout: float, columns: int = 120) -> tuple[int, str]:
    """(exit code, everything written to the terminal, raw with control codes)."""
    master, slave = pty.openpty()
    env = {**env, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while True:
            if time.time() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd} ran longer than {timeout}s")
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def plain(text: str) -> str:
    """Terminal output without colour/cursor control codes."""
    return ANSI.sub("", text)


def summary_block(text: str) -> list[str]:
    """The final summary's lines: from `pipeline <status> in` to the end."""
    lines = plain(text).splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("pipeline ") and " in " in line)
    return [line for line in lines[start:] if line.strip()]
