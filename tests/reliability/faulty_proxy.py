"""A fault-injecting TCP proxy for HTTP object stores (test helper; listens on 127.0.0.1 only).

It sits in front of the S3 test server and, per request, with a seeded probability, does one of:

- `reset_accept`: resets the connection (TCP RST) before reading anything,
- `reset_mid`: forwards the request, then resets the connection part-way through the answer,
- `slowdown`: answers `503 SlowDown` in S3's XML error shape without forwarding the request,
- `slow`: holds the answer back for `slow_s` seconds, then forwards it whole.

Every forwarded request carries `Connection: close`, so one connection is one request and a fault
hits exactly one request. `counts` says how many of each fault were injected.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter

FAULTS = ("reset_accept", "reset_mid", "slowdown", "slow")

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)

DENIED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


def _error(status: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        rate: float,
        seed: int = 0,
        faults: tuple[str, ...] = FAULTS,
        slow_s: float = 0.3,
    ) -> None:
        host, port = upstream.split("://", 1)[-1].rstrip("/").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        self.faults = faults
        self.slow_s = slow_s
        self.deny = False  # True: every request is answered 403 AccessDenied (a permanent error)
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)  # the accept loop checks for stop this often
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _pick(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self._rng.random() >= self.rate:
                return None
            fault = self._rng.choice(self.faults)
            self.counts[fault] += 1
            return fault

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        fault = self._pick()
        if fault == "reset_accept":
            _reset(client)
            return
        try:
            self._forward(client, fault)
        except OSError:
            pass
        finally:
            client.close()

    def _forward(self, client: socket.socket, fault: str | None) -> None:
        client.settimeout(30)
        reader = client.makefile("rb")
        request_line = reader.readline()
        if not request_line:
            return
        headers: list[bytes] = []
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            headers.append(line.rstrip(b"\r\n"))
        names = {h.split(b":", 1)[0].strip().lower(): h.split(b":", 1)[1].strip() for h in headers if b":" in h}
        drop = (b"connection", b"keep-alive", b"expect")
        headers = [h for h in headers if h.split(b":", 1)[0].strip().lower() not in drop]
        if names.get(b"expect", b"").lower() == b"100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _read_body(reader, names)
        if self.deny:
            client.sendall(_error(b"403 Forbidden", DENIED_BODY))
            return
        if fault == "slowdown":
            client.sendall(_error(b"503 Slow Down", SLOWDOWN_BODY))
            return
        up = socket.create_connection(self.upstream, timeout=30)
        try:
            up.sendall(b"\r\n".join([request_line.rstrip(b"\r\n"), *headers, b"Connection: close"]) + b"\r\n\r\n")
            up.sendall(body)
            first = True
            while True:
                chunk = up.recv(65536)
                if not chunk:
                    return
                if first and fault == "slow":
                    time.sleep(self.slow_s)
                if first and fault == "reset_mid":
                    client.sendall(chunk[: max(1, len(chunk) // 2)])
                    _reset(client)
                    return
                first = False
                client.sendall(chunk)
        finally:
            up.close()


def _read_body(reader, names: dict[bytes, bytes]) -> bytes:
    """The request body as sent (chunked framing kept), read whole."""
    if names.get(b"transfer-encoding", b"").lower() != b"chunked":
        return reader.read(int(names.get(b"content-length", b"0") or 0))
    out = b""
    while True:
        size_line = reader.readline()
        out += size_line
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (trailer := reader.readline()) not in (b"\r\n", b"\n", b""):
                out += trailer
            return out + b"\r\n"
        out += reader.read(size + 2)
