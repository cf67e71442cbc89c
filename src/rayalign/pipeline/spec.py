"""The pipeline YAML as typed configs, overrides that address stages by name, and the step list.

A pipeline's `stages` list holds stages and repeat groups; `steps()` flattens it into the order the
runner executes, one `Step` per stage instance (a stage inside `repeat: {times: 3}` gives three).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from rayalign import storage
from rayalign.config import Cfg, ConfigError, parse_override, read_yaml, validate_config

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class StageSpec(Cfg):
    name: str = Field(pattern=NAME_PATTERN)  # unique name: the stage's folder, references and overrides use it
    stage: str  # a stage name: prepare, sft, sample, clair, prefer, eval, ... (`rayalign --help`)
    config: dict[str, Any] = Field(default_factory=dict)  # the stage's config (its fields: rayalign config STAGE)
    # a dataset stage that read rows but wrote none (everything quarantined) fails the run here,
    # where the cause is, instead of a later stage failing on an empty input; true allows it
    allow_empty: bool = False


class RepeatSpec(Cfg):
    """`repeat: {name: rounds, times: N, stages: [...]}`: the stages run N times in order."""

    name: str = Field("rounds", pattern=NAME_PATTERN)  # addresses the group in overrides: stages.rounds.times=3
    times: int = Field(ge=1)  # rounds
    stages: list[StageSpec] = Field(min_length=1)  # run in this order in every round


class RepeatItem(Cfg):
    repeat: RepeatSpec  # a group of stages run `times` times, each round from the previous round's outputs


class PipelineConfig(Cfg):
    run_dir: str  # every stage writes under <run_dir>/<name>/ (local or s3://, gs://)
    # keys copied into every stage config that has such a field and leaves it out
    defaults: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageSpec | RepeatItem]  # the stages in order: {name, stage, config} or {repeat: {...}}
    final_model: str | None = None  # may be a reference, e.g. ${stages.prefer.checkpoint}
    # connect to (or start) Ray once before the first stage so every stage shares one cluster;
    # false leaves it to the stages that need Ray (handy for in-process tests)
    start_ray: bool = True


@dataclass(frozen=True)
class Step:
    """One stage instance in run order. `round` is 1-based inside a repeat group, else None."""

    spec: StageSpec
    round: int | None = None
    times: int | None = None
    group: tuple[str, ...] = ()  # names of the stages of this step's repeat group

    @property
    def id(self) -> str:
        """Unique key of the instance: its folder under run_dir and its key in references."""
        return self.spec.name if self.round is None else f"round-{self.round}/{self.spec.name}"

    @property
    def title(self) -> str:
        where = f" round {self.round}/{self.times}" if self.round is not None else ""
        return f"{self.spec.name} ({self.spec.stage}){where}"


def steps(pipe: PipelineConfig) -> list[Step]:
    out: list[Step] = []
    for item in pipe.stages:
        if isinstance(item, StageSpec):
            out.append(Step(item))
            continue
        group = tuple(s.name for s in item.repeat.stages)
        for r in range(1, item.repeat.times + 1):
            out.extend(Step(s, r, item.repeat.times, group) for s in item.repeat.stages)
    return out


def stage_dir(run_dir: str, step_id: str) -> str:
    """`<run_dir>/<name>` or `<run_dir>/round-<r>/<name>`; a URI stays a URI."""
    return storage.join(run_dir, *step_id.split("/"))


# ---------------------------------------------------------------------------------------------
# loading: YAML + overrides that address stages by name


def apply_pipeline_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Like config.apply_overrides, but `stages.<name>` selects the stage (or repeat group) of that name."""
    for item in overrides or []:
        path, value = parse_override(item)
        node: Any = data
        for part in path[:-1]:
            if isinstance(node, list):
                node = _stage_item(node, part, item)
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {item!r}: {part!r} is a {type(nxt).__name__}, not a section")
            node = nxt
        if isinstance(node, list):
            raise ConfigError(f"override {item!r}: cannot replace a whole stage; set stages.NAME.config.KEY")
        node[path[-1]] = value
    return data


def _flat_items(stages: list) -> list[dict]:
    """Stage dicts and repeat-group dicts, groups' own stages included, in file order."""
    out = []
    for s in stages:
        if isinstance(s, dict) and isinstance(s.get("repeat"), dict):
            group = s["repeat"]
            out.append({"name": group.get("name", "rounds"), "_node": group})
            out.extend({"name": x.get("name"), "_node": x} for x in group.get("stages") or [] if isinstance(x, dict))
        elif isinstance(s, dict):
            out.append({"name": s.get("name"), "_node": s})
    return out


def _stage_item(stages: list, key: str, item: str) -> dict:
    items = _flat_items(stages)
    for s in items:
        if s["name"] == key:
            return s["_node"]
    if key.isdigit() and int(key) < len(stages):
        return stages[int(key)]
    names = ", ".join(str(s["name"]) for s in items)
    raise ConfigError(f"override {item!r}: no stage named {key!r}; stages: {names}")


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    data = apply_pipeline_overrides(read_yaml(path), overrides)
    cfg = validate_config(PipelineConfig, data, str(path))
    seen: set[str] = set()
    for item in cfg.stages:
        names = [item.name] if isinstance(item, StageSpec) else [s.name for s in item.repeat.stages]
        for name in names:
            if name in seen:
                raise ConfigError(f"{path}: stage name {name!r} is used twice; names must be unique")
            seen.add(name)
    return cfg
