"""Helpers shared by the serving tests."""

from __future__ import annotations


def wait_for_line(proc, log, text: str, timeout_s: float) -> None:
    """Wait until a subprocess's log file holds `text`; fail with the log tail if it dies or stalls."""
    import time

    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def engine_stats(app_name: str) -> dict:
    """The engine server's counters, read through the ingress (which holds the engine server itself
    when colocated, or a handle to its deployment)."""
    from ray import serve

    return serve.get_deployment_handle("OpenAIIngress", app_name).engine_stats.remote().result()
