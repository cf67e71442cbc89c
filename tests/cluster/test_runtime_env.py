"""What a driver ships to the cluster it joins: the package (py_modules) and settings, no secrets."""

from __future__ import annotations

from pathlib import Path

import rayalign
from rayalign.runtime_env import SECRETS, SETTINGS, SHIP_ENV, package_dir, shipped_by_job, worker_runtime_env

ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "HF_TOKEN": "hf_secret",
    "AWS_SECRET_ACCESS_KEY": "s3cret",
    "HF_ENDPOINT": "https://hub.example",
}


def test_joining_a_cluster_ships_the_package_and_settings_but_no_secrets(monkeypatch):
    for k in SETTINGS + SECRETS:
        monkeypatch.delenv(k, raising=False)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(SHIP_ENV, raising=False)
    rt = worker_runtime_env({"RAYALIGN_X": "1"}, remote=True)
    assert rt["py_modules"] == [str(Path(rayalign.__file__).resolve().parent)]
    assert (package_dir() / "runtime_env.py").exists()
    assert rt["env_vars"] == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "HF_ENDPOINT": "https://hub.example",
        "RAYALIGN_X": "1",
    }


def test_a_local_cluster_gets_settings_no_secrets_and_no_upload(monkeypatch):
    """Secrets reach a local cluster's workers by inheritance (its raylet is this process's child),
    never through the recorded runtime environment."""
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(SHIP_ENV, raising=False)
    rt = worker_runtime_env({}, remote=False)
    assert "py_modules" not in rt
    assert rt["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert not set(SECRETS) & set(rt["env_vars"]) and "hf_secret" not in str(rt)


def test_opt_out_and_packages_a_job_already_shipped(monkeypatch):
    monkeypatch.setenv(SHIP_ENV, "0")
    assert "py_modules" not in worker_runtime_env({}, remote=True)
    monkeypatch.setenv(SHIP_ENV, "1")
    assert "py_modules" in worker_runtime_env({}, remote=False)
    job_copy = Path("/tmp/ray/session_x/runtime_resources/py_modules_files/_ray_pkg_ab/rayalign")
    assert shipped_by_job(job_copy) and not shipped_by_job(Path("/work/src/rayalign"))
