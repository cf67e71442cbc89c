"""Every file in cluster/ against what reads it: Ray's own autoscaler config schema and defaults,
the resources each node type declares, the IAM policy the autoscaler needs, KubeRay's current
fields and the Service names it derives; the Dockerfile's one CUDA and the docs' commands."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "rayjob.yaml", CLUSTER / "rayservice.yaml"]
DOCS = (REPO / "docs" / "cluster.md").read_text()

# What Ray's AWS node provider calls from the head (ray/autoscaler/_private/aws/node_provider.py:
# create_instances, instances.filter, create_tags, terminate/stop, describe_instance_types) and
# what launching workers with the nodes' instance profile needs.
AUTOSCALER_ACTIONS = {
    "ec2:RunInstances",
    "ec2:TerminateInstances",
    "ec2:CreateTags",
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceTypes",
    "iam:PassRole",
}
S3_ACTIONS = {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
# KubeRay fields that are deprecated (ignored by current operators)
DEPRECATED_KUBERAY = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold", "runtimeEnv"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def keys_in(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in keys_in(v)}
    if isinstance(node, list):
        return {k for v in node for k in keys_in(v)}
    return set()


def test_every_cluster_file_is_covered_here():
    covered = {p.name for p in LAUNCHER + KUBERAY} | {
        "runtime_env.yaml",
        "aws-iam-policy.json",
        "aws-trust-policy.json",
    }
    assert {p.name for p in CLUSTER.iterdir()} == covered


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_configs_pass_rays_own_schema_and_defaults(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(load(path)))  # fills Ray's defaults, then its JSON schema
    validate_config(config)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no task work on the head
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    cpu = {k: v for k, v in workers.items() if not v["resources"].get("GPU")}
    assert gpu and cpu, "a GPU worker type and a CPU worker type (CPU-only stages never need a GPU node)"
    for name, t in workers.items():
        assert t["min_workers"] == 0, f"{name} scales from zero"
        assert t["resources"].get("CPU", 0) > 0, f"{name} declares its CPUs"
    total = sum(t["max_workers"] for t in workers.values())
    assert config["max_workers"] >= total, "the cluster-wide cap lets every type reach its own"


def test_gcp_gpu_workers_declare_gpus_have_an_identity_and_wait_for_the_driver():
    config = load(CLUSTER / "gcp.yaml")
    gpu = config["available_node_types"]["gpu_workers"]
    accel = gpu["node_config"]["guestAccelerators"][0]["acceleratorCount"]
    assert gpu["resources"]["GPU"] == accel  # Ray's GCP provider fills TPU resources only
    for name, t in config["available_node_types"].items():
        nc = t["node_config"]
        assert nc["serviceAccounts"][0]["email"].startswith("rayalign-nodes@"), name
        image = nc["disks"][0]["initializeParams"]["sourceImage"]
        assert "common-cu124" not in image and re.search(r"nvidia-(5[7-9]\d|[6-9]\d\d)$", image), image
        scheduling = nc.get("scheduling", {})
        if scheduling.get("provisioningModel") == "SPOT":  # a stopped spot VM would linger
            assert scheduling["instanceTerminationAction"] == "DELETE", name
    assert any("nvidia-smi" in c for c in config["initialization_commands"])


def test_aws_gpu_workers_declare_the_instance_gpus_and_a_current_driver_ami():
    config = load(CLUSTER / "aws.yaml")
    gpus = {"p4d.24xlarge": 8, "p5.48xlarge": 8, "g5.12xlarge": 4, "g6e.12xlarge": 4}
    for name, t in config["available_node_types"].items():
        nc = t["node_config"]
        assert nc["ImageId"] != "latest_dlami"  # Ray 2.60 resolves it to an Ubuntu 18.04 DLAMI
        assert (
            nc["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/ami/") and "nvidia-driver" in nc["ImageId"]
        )
        assert nc["IamInstanceProfile"] == {"Name": "rayalign-node"}
        if nc["InstanceType"] in gpus:
            assert t["resources"]["GPU"] == gpus[nc["InstanceType"]], name


def test_the_shipped_iam_policy_lists_the_autoscalers_actions_and_the_bucket():
    policy = json.loads((CLUSTER / "aws-iam-policy.json").read_text())
    actions: set[str] = set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions |= {st["Action"]} if isinstance(st["Action"], str) else set(st["Action"])
    assert actions >= AUTOSCALER_ACTIONS, AUTOSCALER_ACTIONS - actions
    assert actions >= S3_ACTIONS
    pass_role = [st for st in policy["Statement"] if "iam:PassRole" in st["Action"]]
    assert all("role/rayalign-node" in " ".join(st["Resource"]) for st in pass_role)  # not iam:PassRole on *
    trust = json.loads((CLUSTER / "aws-trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert "aws-iam-policy.json" in (CLUSTER / "aws.yaml").read_text() and "aws-iam-policy.json" in DOCS


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_files_use_no_deprecated_field_and_pull_with_a_login(path):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    assert not DEPRECATED_KUBERAY & keys_in(doc)
    cluster = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["imagePullSecrets"] == [{"name": "rayalign-registry"}]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:  # KubeRay turns the limit into the pod's Ray GPUs
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in group["template"]["spec"][
                "tolerations"
            ]
    if path.name == "rayjob.yaml":
        groups = cluster["workerGroupSpecs"]
        assert any(
            "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups
        )
        assert all(g["minReplicas"] == 0 for g in groups)


def test_service_names_are_the_ones_kuberay_derives():
    name = load(CLUSTER / "rayservice.yaml")["metadata"]["name"]
    serve_svc = f"{name}-serve-svc"  # KubeRay: <RayService name>-serve-svc
    named = set(re.findall(r"svc/([\w-]+)", DOCS + (CLUSTER / "rayservice.yaml").read_text()))
    assert named == {serve_svc}, named
    job = load(CLUSTER / "rayjob.yaml")["metadata"]["name"]
    assert f"rayjob {job}" in DOCS and f"job-name={job}" in DOCS


def test_docs_deploy_a_gpu_serve_config_on_a_gpu_cluster():
    from rayalign.serve.config import ServeConfig

    [config] = re.findall(r"rayjobs/serve\.py (rayjobs/configs/\S+\.yaml)", DOCS)
    cfg = ServeConfig.model_validate(load(REPO / config))
    assert cfg.backend == "vllm" and cfg.engine_num_gpus >= 1 and cfg.engine.dtype in ("bfloat16", "bf16")
    assert cfg.host == "127.0.0.1"


def test_dockerfile_one_cuda_for_base_torch_and_vllm():
    text = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, flags=re.M))
    pins = dict(line.split("==") for line in (REPO / "docker" / "constraints.txt").read_text().split() if "==" in line)
    assert args["PLATFORM"] == "cu128"
    assert args["TORCH_INDEX"] == f"https://download.pytorch.org/whl/{args['PLATFORM']}"
    assert args["VLLM_INDEX"] == f"https://wheels.vllm.ai/{pins['vllm']}/{args['PLATFORM']}"
    assert '--index-url "$TORCH_INDEX" torch' in text
    # the GPU install names the variant's local version (vllm==0.32.0+cu128) and checks what it got
    assert "VLLM_PIN=\"vllm==$(sed -n 's/^vllm==//p' docker/constraints.txt)+${PLATFORM}\"" in text
    assert '".[${EXTRAS}]" ${VLLM_PIN:-}' in text and "v.endswith('+${PLATFORM}')" in text
    assert re.search(r"driver\s+(#\s+)?>= 570", text) and "driver ≥ 570" in DOCS
