"""Helpers shared by the serving tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on right now (Serve's HTTP proxy binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
