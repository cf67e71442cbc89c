"""A local cluster started by rayalign listens on loopback only, whatever the process imported first.

Run in a fresh interpreter without the test suite's environment: Ray reads its loopback switch when
`ray` is first imported, so a driver that imports Ray before `ensure_ray` sets the environment used
to end up on the machine's interface address (and its raylet, GCS and workers listening on it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, ray  # ray first, as the CLI's imports do
import psutil
from rayalign.raycluster import ensure_ray

ensure_ray(num_cpus=1)

@ray.remote(num_cpus=0)
def worker_ip():
    return ray.util.get_node_ip_address()

ips = {"nodes": [n["NodeManagerAddress"] for n in ray.nodes()], "worker": ray.get(worker_ip.remote())}
mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
ips["listeners"] = sorted({
    c.laddr.ip for c in psutil.net_connections(kind="tcp")
    if c.status == psutil.CONN_LISTEN and c.pid in mine
})
ray.shutdown()
print("RESULT " + json.dumps(ips))
"""


@pytest.mark.timeout(180)
def test_local_cluster_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=170)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, out.stderr[-2000:]
    ips = json.loads(line[len("RESULT ") :])
    assert ips["nodes"] == ["127.0.0.1"] and ips["worker"] == "127.0.0.1"
    assert ips["listeners"] and all(_loopback(ip) for ip in ips["listeners"]), ips["listeners"]


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback
