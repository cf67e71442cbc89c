"""docs/architecture.md against the code: its layer table names every subpackage and top-level
module of rayalign and nothing else, its stage table names every registered stage with the module
that holds it, and every path it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

from rayalign.cli import COMMANDS
from rayalign.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "rayalign"
DOC = (REPO / "docs" / "architecture.md").read_text()
NAME = re.compile(r"^[a-z_]+(/|\.py)$")


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end > 0 else None]


def layer_names() -> set[str]:
    """The names a line of the layer table starts with (`train/  generate/  the trainer...` gives
    train/ and generate/); continuation lines start with spaces."""
    block = section("Layers").split("```")[1]
    names: set[str] = set()
    for line in block.splitlines():
        if not line or line[0].isspace():
            continue
        for token in line.split():
            if not NAME.match(token):
                break
            names.add(token)
    return names


def stage_rows() -> dict[str, str]:
    """Stage name → the module column of its row in the stage table."""
    rows: dict[str, str] = {}
    for line in section("Where each stage lives").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("stage", "---"):
            continue
        for name in cells[0].split(","):
            rows[name.strip()] = cells[1]
    return rows


def test_layer_table_names_every_subpackage_and_module():
    packages = {f"{p.parent.name}/" for p in SRC.glob("*/__init__.py")}
    modules = {p.name for p in SRC.glob("*.py") if p.name != "__init__.py"}
    listed = layer_names()
    assert packages - listed == set(), f"subpackages missing from docs/architecture.md: {packages - listed}"
    assert modules - listed == set(), f"modules missing from docs/architecture.md: {modules - listed}"
    assert listed - packages - modules == set(), f"listed but not in the code: {listed - packages - modules}"


def test_stage_table_names_every_stage_and_its_module():
    rows = stage_rows()
    assert set(STAGES) <= set(rows), f"stages missing from the table: {set(STAGES) - set(rows)}"
    assert set(rows) <= set(STAGES) | set(COMMANDS), (
        f"not a stage or command: {set(rows) - set(STAGES) - set(COMMANDS)}"
    )
    for name, (config_ref, _) in STAGES.items():
        path = config_ref.split(":")[0].removeprefix("rayalign.").replace(".", "/") + ".py"
        cited = rows[name].replace("<name>", name)
        assert f"`{path}`" in cited, f"{name}: the table says {rows[name]!r}, the registry {path}"


def test_every_cited_path_exists():
    cited = set(re.findall(r"`([a-z_]+(?:/[a-z_<>]+)*(?:/|\.py))`", DOC))
    templates = {c for c in cited if "<" in c or "/my." in c}  # `generate/<name>.py`, `rayjobs/my.py`
    roots = (SRC, SRC.parent, REPO, REPO / "tests")
    missing = [c for c in sorted(cited - templates) if not any((root / c).exists() for root in roots)]
    assert not missing, f"docs/architecture.md cites paths that do not exist: {missing}"
