"""Start or join Ray, always on loopback for local clusters.

`RAY_ADDRESS` (set by `ray job submit` and by users) means: join that cluster. Otherwise a local
cluster is started bound to 127.0.0.1 with the dashboard off, sized to this machine's CPUs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

from rayalign.runtime_env import worker_runtime_env


def local_ray_env() -> dict[str, str]:
    """Environment that keeps every Ray listener of a local cluster on 127.0.0.1."""
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"),
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DATA_DISABLE_PROGRESS_BARS": os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "1"),
    }


def _loopback_only() -> None:
    """Make this process's Ray resolve its node address to 127.0.0.1, as the child processes do.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when `ray` is first imported; with it unset,
    `ray.init(_node_ip_address="127.0.0.1")` rewrites loopback to the machine's interface address
    and the raylet, its workers and their listeners take that address. The environment above
    reaches the processes Ray starts; this process imported `ray` before it was set, so its copy of
    the switch is set here too (a module constant Ray reads at call time).
    """
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def ensure_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    import ray

    if ray.is_initialized():
        return
    for k, v in local_ray_env().items():
        os.environ.setdefault(k, v)
    address = os.environ.get("RAY_ADDRESS")
    # workers see the same settings as the driver (local-cluster env plus RAYALIGN_* knobs)
    names = set(local_ray_env()) | {k for k in os.environ if k.startswith("RAYALIGN_")}
    # joining a cluster also ships the package (py_modules) to nodes whose Python lacks it
    runtime_env = worker_runtime_env({k: os.environ[k] for k in sorted(names)}, remote=bool(address))
    if address:
        # inside `ray job submit` the job already has a runtime_env (working_dir, env_vars): let
        # Ray merge ours into it instead of refusing to start the driver over a conflict
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=log_to_driver)
        return
    _loopback_only()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=log_to_driver,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    with contextlib.suppress(Exception):  # older Ray has no such switch
        ray.data.DataContext.get_current().enable_progress_bars = False


def ray_running() -> bool:
    """Whether this process is connected to Ray (without importing it)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def shutdown_ray(grace_s: float = 30.0) -> None:
    """Stop the local cluster this process started (a joined cluster via RAY_ADDRESS only disconnects).

    A dataset interrupted mid-run (Ctrl-C, SIGTERM) leaves its executor thread finishing a
    scheduling step: Ray Data waits 2 s for it, and if that thread calls into Ray after
    `ray.shutdown()`, Ray's core worker ends the whole process with exit code 1 (measured: 3 of 6
    interrupted runs on a loaded 2-core box), which a scheduler reads as a failure rather than a
    stop. So those threads are joined first, for at most `grace_s`.
    """
    if not ray_running():
        return
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread.name.startswith("StreamingExecutor-") and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    sys.modules["ray"].shutdown()
