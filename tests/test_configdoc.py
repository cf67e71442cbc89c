"""`rayalign config`: every stage field documented, templates that load back, docs/config.md current."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayalign.cli import main
from rayalign.config import validate_config
from rayalign.configdoc import _trailing_comment, markdown, names, stage_docs, yaml_template

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


@pytest.mark.parametrize("stage", names())
def test_every_field_has_a_type_and_a_meaning(stage):
    _, rows = stage_docs(stage)
    assert rows
    assert [r.path for r in rows if not r.meaning] == [], "add a comment or Field(description=...) to these fields"
    assert all(r.type for r in rows)


@pytest.mark.parametrize("stage", names())
def test_yaml_template_loads_back_as_the_stage_defaults(stage):
    cls, rows = stage_docs(stage)
    data = yaml.safe_load(yaml_template(stage))
    cfg = validate_config(cls, data, f"{stage} template")
    # the template holds the defaults: the same config as one given only its required fields
    required = {}
    for r in rows:
        if r.required and r.depth == 0:
            required[r.path] = data[r.path]
        elif r.required and r.path.startswith("train.") and r.depth == 1:
            required.setdefault("train", {})[r.path.split(".", 1)[1]] = data["train"][r.path.split(".", 1)[1]]
    assert cfg == validate_config(cls, required, f"{stage} required fields")


def test_stage_defaults_of_a_nested_section_are_the_stages_own():
    # sample overrides SamplingParams' class defaults (n=1, temperature 0) with its own
    rows = {r.path: r for r in stage_docs("sample")[1]}
    assert rows["params.n"].default == 2 and rows["params.temperature"].default == 0.7
    assert rows["engine.backend"].type == '"hf" | "vllm"'
    assert rows["pool.limit"].type == "int | None" and rows["pool.limit"].default is None
    assert rows["inputs"].required and rows["engine"].section
    prefer = {r.path: r for r in stage_docs("prefer")[1]}
    assert prefer["train.name"].default == "prefer"  # the composed run's own default
    assert prefer["train.optim.lr"].default == 2e-5
    grpo = {r.path for r in stage_docs("grpo")[1]}
    assert {"rewards", "rewards[].name", "rewards[].weight"} <= grpo


def test_cli_table_and_yaml(capsys):
    assert main(["config", "sample"]) == 0
    out = capsys.readouterr().out
    assert "  params.max_tokens: int = 256\n      most new tokens per answer" in out
    assert main(["config", "sample", "--yaml"]) == 0
    out = capsys.readouterr().out
    assert "output: runs/sample  # required: replace" in out
    assert "# int: most new tokens per answer" in out
    assert main(["config", "nosuch"]) == 2
    assert "unknown stage 'nosuch'" in capsys.readouterr().err


def test_trailing_comment_ignores_hashes_in_strings():
    assert _trailing_comment('    sep: str = "#"  # the separator') == "the separator"
    assert _trailing_comment("    url: str = 'a#b'") == ""


def test_docs_config_md_is_current():
    assert DOC.read_text() == markdown(), "docs/config.md is out of date: run `make docs`"
