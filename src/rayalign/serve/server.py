"""Start, wait for and stop the serving app on a (local or joined) Ray cluster.

url = start(ServeConfig(model="tiny-random:llama", port=8000))   # returns once ready
...                                                                # clients use url + "/v1"
stop(cfg)
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
import warnings

from rayalign.serve.config import ServeConfig


def base_url(cfg: ServeConfig) -> str:
    prefix = cfg.route_prefix.rstrip("/")
    return f"http://{cfg.host}:{cfg.port}{prefix}"


def start(cfg: ServeConfig, ready_timeout_s: float = 300.0) -> str:
    """Deploy the app (joining Ray or starting a loopback cluster) and wait until /health is ok."""
    from ray import serve

    from rayalign.raycluster import ensure_ray
    from rayalign.serve.app import build_app

    ensure_ray()
    # HTTP binds where the config says; the default is loopback only (no exposure by accident).
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    cfg = _actual_http(cfg)
    url = base_url(cfg)
    wait_ready(url, ready_timeout_s)
    return url


def _actual_http(cfg: ServeConfig) -> ServeConfig:
    """Serve keeps the HTTP options of whoever started it first on a cluster; report those."""
    try:
        from ray.serve.context import _get_global_client  # private, hence the fallback below

        client = _get_global_client()
        if client is None:
            return cfg
        host, port = client.http_config.host, int(client.http_config.port)
    except Exception:
        return cfg
    if (host, port) != (cfg.host, cfg.port):
        warnings.warn(
            f"Serve was already running on this cluster at {host}:{port}; it keeps that address "
            f"(asked for {cfg.host}:{cfg.port})",
            stacklevel=3,
        )
        return cfg.model_copy(update={"host": host, "port": port})
    return cfg


def wait_ready(url: str, timeout_s: float) -> None:
    """serve.run returns when replicas are up; this also proves the HTTP proxy routes to them."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
                if r.status == 200:
                    return
        except Exception as e:
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"{url}/health not ready after {timeout_s:.0f}s (last error: {last})")


def stop(cfg: ServeConfig | None = None, shutdown_serve: bool = True) -> None:
    """Delete the app; then, if `shutdown_serve` and no other app is left on the cluster, stop
    Serve's controller and HTTP proxy too (a joined cluster may serve other people's apps)."""
    from ray import serve

    if cfg is not None:
        with contextlib.suppress(Exception):
            serve.delete(cfg.app_name)
    if not shutdown_serve:
        return
    try:
        others = [name for name in serve.status().applications if cfg is None or name != cfg.app_name]
    except Exception:
        return
    if not others:
        serve.shutdown()
