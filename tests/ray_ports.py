"""Loopback ports for the Ray clusters and servers the tests start themselves.

Every fixed default port of `ray start` (the client server's 10001, the dashboard agent's 52365, ...)
may be held by another cluster on this shared machine (the other pytest worker runs its own), and two
Ray components on one port abort `ray start --block`: every listener gets a port of its own.
"""

from __future__ import annotations

import socket

_GIVEN: set[int] = set()

# `ray start` listeners that otherwise take a fixed default port or one Ray picks itself
NODE_LISTENERS = (
    "object-manager-port",
    "node-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on now, never one handed out before in this process (the
    kernel may give a just-released port again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def listener_flags(head: bool) -> list[str]:
    """`ray start` flags giving each of a node's listeners a free port (a head's client server too)."""
    flags = NODE_LISTENERS + (("ray-client-server-port",) if head else ())
    return [f"--{flag}={free_port()}" for flag in flags]
