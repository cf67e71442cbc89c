"""What a driver that joins a Ray cluster ships to the cluster's workers: the package and settings.

Nodes of a cluster need rayalign's dependencies (the project's image has them), not rayalign itself:
a driver that joins a cluster (`RAY_ADDRESS`, `rayalign run`, `rayalign serve`) ships the package it
imported through Ray's runtime environment (`py_modules`), so workers run exactly the code the
driver runs. Jobs submitted with `ray job submit --runtime-env cluster/runtime_env.yaml` get the
package the same way (`py_modules: [src/rayalign]` there); their drivers then import it from the
job's runtime resources and ship nothing more.

Settings that workers need to reach storage and the hub (S3 endpoint and region, hub endpoint and
offline mode) travel as environment variables. Secrets (`HF_TOKEN`, AWS keys) never do: a runtime
environment is visible in the cluster's dashboard and job records. On a cluster they belong in the
nodes' own environment (a Kubernetes secret, an instance role, `cluster.env` sourced by
`ray start`); a local cluster's Ray processes are started by this process and inherit its
environment, secrets included, without them being recorded anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# non-secret settings every worker needs to reach object storage and the model hub
SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "TRANSFORMERS_OFFLINE",
    "RAYALIGN_STORAGE_RETRIES",
    "RAYALIGN_STORAGE_BACKOFF_S",
)
# credentials: never in a runtime environment (see the module docstring)
SECRETS = ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

SHIP_ENV = "RAYALIGN_SHIP_PACKAGE"  # "0": never ship (the image has rayalign); "1": always


def package_dir() -> Path:
    """The folder of the rayalign package this process imported."""
    import rayalign

    return Path(rayalign.__file__).resolve().parent


def shipped_by_job(path: Path | None = None) -> bool:
    """True when this process imported rayalign from a runtime environment Ray unpacked (a job's
    `py_modules`): the job already gives it to every worker."""
    return "runtime_resources" in (path or package_dir()).parts


def should_ship(remote: bool) -> bool:
    """Ship the package to a joined cluster unless the job already did or the user opted out."""
    choice = os.environ.get(SHIP_ENV, "").strip()
    if choice in ("0", "1"):
        return choice == "1"
    return remote and not shipped_by_job()


def forwarded_env() -> dict[str, str]:
    """The storage/hub settings set in this process (never its credentials)."""
    return {k: os.environ[k] for k in SETTINGS if os.environ.get(k)}


def worker_runtime_env(env_vars: dict[str, str], remote: bool) -> dict[str, Any]:
    """The `runtime_env` for `ray.init`: `env_vars` plus forwarded settings, and the package itself
    (`py_modules`) when joining a cluster whose nodes may not have it.

    `remote` is True when joining an existing cluster (`RAY_ADDRESS`), False for a local cluster
    this process starts (its workers share this machine's files and environment).
    """
    runtime_env: dict[str, Any] = {"env_vars": {**forwarded_env(), **env_vars}}
    if should_ship(remote):
        runtime_env["py_modules"] = [str(package_dir())]
        runtime_env["excludes"] = ["__pycache__/", "*.pyc"]
    return runtime_env
