"""Every shipped YAML validates: pipelines and stage configs through the stage registry, serve
configs against ServeConfig, and the cluster files (autoscaler, KubeRay, runtime_env) have the keys
their tools require. Nothing runs; a config that drifts from its class fails here first."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rayalign.config import load_config
from rayalign.pipeline import load_pipeline, steps, validate_pipeline
from rayalign.stages import STAGES, get_stage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "rayjobs" / "configs").glob("*.yaml"))
CLUSTER = sorted((REPO / "cluster").glob("*.yaml"))


def stage_of(path: Path) -> str:
    """The command a config is for, read from its usage line (`rayalign sft rayjobs/configs/x.yaml` or
    `python rayjobs/sft.py rayjobs/configs/x.yaml`), else the file name's prefix (`sft_lora` → sft)."""
    text = path.read_text()
    m = re.search(rf"(?:rayalign\s+|rayjobs/)(\w+)(?:\.py)?\s+(?:--config\s+)?\S*{re.escape(path.name)}", text)
    if m and (m.group(1) in STAGES or m.group(1) in ("serve", "run", "pipeline")):
        return m.group(1)
    for name in sorted(STAGES, key=len, reverse=True):
        if path.stem == name or path.stem.startswith(name + "_"):
            return name
    raise AssertionError(
        f"{path.name}: cannot tell which stage it configures; add a usage line "
        f"like '#   rayalign STAGE rayjobs/configs/{path.name}'"
    )


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "quickstart-rounds.yaml", "pipeline-tiny.yaml", "llama3-8b-clair-apo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates(path):
    data = yaml.safe_load(path.read_text())
    if "stages" in data:  # a pipeline: every stage config resolves and validates against its class
        pipe = load_pipeline(path)
        cfgs = validate_pipeline(pipe, str(path))
        assert len(cfgs) == len(steps(pipe)) >= len(pipe.stages) >= 1  # a repeat group gives N per stage
        return
    stage = stage_of(path)
    if stage == "serve":
        from rayalign.serve.config import ServeConfig

        load_config(ServeConfig, path)
        return
    cls, _ = get_stage(stage)
    load_config(cls, path)


def test_quickstart_chain():
    """The quickstart samples the base model on the all-kinds training prompts, pairs its answers with
    their CLAIR revisions, trains APO-zero from the base on them, and evaluates that policy against the
    base; the dev split it was chosen on is not among its inputs."""
    pipe = load_pipeline(REPO / "rayjobs/configs/quickstart.yaml")
    assert [s.stage for s in pipe.stages] == ["sample", "clair", "reference", "prefer", "prepare", "eval"]
    cfgs = {s.name: c for s, c in zip(pipe.stages, validate_pipeline(pipe, "quickstart.yaml"))}
    base = "builtin:smollm2-135m-instruct"
    assert pipe.defaults["model"] == base
    assert cfgs["sample"].model == cfgs["reference"].model == cfgs["prefer"].train.model == base
    assert cfgs["sample"].inputs == ["rayjobs/data/constraint_prompts.jsonl"]
    assert cfgs["clair"].inputs == [f"{pipe.run_dir}/sample/data"] and cfgs["clair"].reviser == "rule"
    assert cfgs["prefer"].train.objective.name == "apo_zero"
    assert cfgs["eval"].model == "<stages.prefer.checkpoint>" and cfgs["eval"].baseline_model == base
    assert cfgs["eval"].suite == "heldout" and cfgs["eval"].limit is None  # the independent suite, all of it
    assert cfgs["eval"].gate is not None and cfgs["eval"].gate.min_lower_bound == 0.0
    assert "dev_suite" not in (REPO / "rayjobs/configs/quickstart.yaml").read_text().split("stages:", 1)[1]


def test_quickstart_rounds_chain():
    """The rounds variant wires each stage to the previous one's output: two on-policy rounds of
    sample → clair → reference → prefer (APO-zero), round 1 from the base model, round 2 from round 1's
    policy, then eval on the last round's prefer."""
    pipe = load_pipeline(REPO / "rayjobs/configs/quickstart-rounds.yaml")
    order = [s.id for s in steps(pipe)]
    round_stages = ["sample", "clair", "reference", "prefer"]
    assert order == [
        *[f"round-{r}/{n}" for r in (1, 2) for n in round_stages],
        "heldout",
        "eval",
    ]
    kinds = {s.id: s.spec.stage for s in steps(pipe)}
    assert all(kinds[f"round-2/{n}"] == n for n in round_stages) and kinds["eval"] == "eval"
    cfgs = dict(zip(order, validate_pipeline(pipe, "quickstart-rounds.yaml")))
    r1, r2 = cfgs["round-1/prefer"], cfgs["round-2/prefer"]
    assert r1.train.objective.name == r2.train.objective.name == "apo_zero"
    assert r1.train.model == cfgs["round-1/sample"].model == cfgs["round-1/reference"].model == pipe.defaults["model"]
    policy2 = "<round.prev.prefer.checkpoint>"
    assert r2.train.model == cfgs["round-2/sample"].model == cfgs["round-2/reference"].model == policy2
    assert cfgs["round-2/clair"].inputs == [f"{pipe.run_dir}/round-2/sample/data"]
    assert cfgs["round-1/sample"].params.seed == 1 and cfgs["round-2/sample"].params.seed == 2
    assert cfgs["round-1/sample"].inputs == cfgs["round-2/sample"].inputs == ["rayjobs/data/constraint_prompts.jsonl"]
    assert cfgs["eval"].model == "<stages.prefer.checkpoint>"
    assert pipe.defaults["model"] == "builtin:smollm2-135m-instruct"


# --- cluster/ -------------------------------------------------------------------------------

AUTOSCALER_KEYS = {
    "cluster_name",
    "max_workers",
    "provider",
    "auth",
    "available_node_types",
    "head_node_type",
    "head_start_ray_commands",
    "worker_start_ray_commands",
}


@pytest.mark.parametrize("path", CLUSTER, ids=[p.name for p in CLUSTER])
def test_cluster_yaml(path):
    doc = yaml.safe_load(path.read_text())
    if doc.get("kind") == "RayJob":
        assert doc["apiVersion"] == "ray.io/v1"
        spec = doc["spec"]
        assert "rayjobs/pipeline.py" in spec["entrypoint"]
        assert (REPO / spec["entrypoint"].split()[2]).exists()  # the pipeline YAML it runs is in the repo
        cluster = spec["rayClusterSpec"]
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        groups = cluster["workerGroupSpecs"]
        gpu = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert gpu and gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] > 0
        assert cluster["enableInTreeAutoscaling"] is True
    elif doc.get("kind") == "RayService":
        assert doc["apiVersion"] == "ray.io/v1" and "serveConfigV2" in doc["spec"]
    elif "provider" in doc:  # Ray autoscaler cluster launcher
        assert set(doc) >= AUTOSCALER_KEYS, AUTOSCALER_KEYS - set(doc)
        assert doc["provider"]["type"] in ("aws", "gcp")
        types = doc["available_node_types"]
        assert doc["head_node_type"] in types
        assert types[doc["head_node_type"]]["resources"].get("CPU") == 0  # CPU head takes no task work
        workers = [t for n, t in types.items() if n != doc["head_node_type"]]
        assert workers and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers)
        assert all(t["max_workers"] <= doc["max_workers"] for t in workers)
    else:  # runtime_env
        assert path.name == "runtime_env.yaml"
        assert doc["working_dir"] == "."
        for must in (".venv/", ".git/", "runs/"):
            assert must in doc["excludes"]
        assert all(isinstance(v, str) for v in doc.get("env_vars", {}).values())  # Ray requires strings


@pytest.mark.parametrize("stage", ["prefer", "reward", "grpo"])
def test_composed_run_keys_top_level_or_under_train(stage):
    """Stages that nest a training run accept its keys either way (with the stage's defaults filling
    the gaps); one key given both ways with different values is refused, naming it."""
    from rayalign.config import ConfigError

    cls, _ = get_stage(stage)
    base = {"model": "tiny-random:llama", "output_dir": "/tmp/out", "data": {"path": "/tmp/x"}}
    if stage == "grpo":
        base = {"model": "tiny-random:llama", "output_dir": "/tmp/out", "prompts": ["/tmp/p.jsonl"]}
        base["rewards"] = [{"name": "length"}]
    top = load_config(cls, None, ["seed=5"], data=dict(base))
    nested = load_config(cls, None, ["train.seed=5"], data=dict(base))
    assert top.train.seed == nested.train.seed == 5 and top.train.name == stage
    same = load_config(cls, None, ["seed=5", "train.seed=5"], data=dict(base))
    assert same.train.seed == 5
    with pytest.raises(ConfigError, match=r"'seed' is given at the top level \(5\) and under train: \(3\)"):
        load_config(cls, None, ["seed=5", "train.seed=3"], data=dict(base))


# entries of a list or a pipeline ("spec" of one item) and vLLM's own name, not config sections
NOT_CONFIG_SECTIONS = {"StageSpec", "RepeatSpec", "RepeatItem", "RewardSpec", "ObjectiveSpec", "SamplingParams"}


def test_config_classes_are_named_config():
    """Every config class a stage or `rayalign serve` reads, nested sections included, is a `*Config`."""
    import typing

    from pydantic import BaseModel

    from rayalign.serve.config import ServeConfig

    seen: set[type] = set()

    def walk(tp: object) -> None:
        for arg in typing.get_args(tp):
            walk(arg)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen:
            seen.add(tp)
            for field in tp.model_fields.values():
                walk(field.annotation)

    for name in STAGES:
        walk(get_stage(name)[0])
    walk(ServeConfig)
    names = {c.__name__ for c in seen if c.__module__.startswith("rayalign.")}
    assert len(names) > 20
    bad = sorted(n for n in names - NOT_CONFIG_SECTIONS if not n.endswith("Config"))
    assert not bad, f"config classes not named *Config: {bad}"
