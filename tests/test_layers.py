"""Layers point one way: the import graph between rayalign's subpackages has no cycle, the modules
inside one package import each other without a cycle either, no module imports a stage module of
another package (the registry in `rayalign.stages` names them), eval does not reach into the prefer
stage package, and train/ and generate/ never import eval/. Imports are read with `ast`, top-level,
inside functions and under `TYPE_CHECKING` alike.

`rayalign.checks` (the constraint checks) is a low module of its own: generate (the rule
reviser), rl (rewards) and eval (the eval stage) all use it, and it imports nothing above config.
"""

from __future__ import annotations

import ast
import functools
import itertools
from pathlib import Path

from rayalign.stages import STAGES

SRC = Path(__file__).resolve().parents[1] / "src" / "rayalign"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def node(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rayalign"


@functools.cache
def imports(module: str) -> frozenset[str]:
    """Every rayalign module `module` imports, anywhere in the file (functions included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - n.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in n.names)
    return frozenset(m for m in found if m in MODULES)


def edges() -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(node, node) → the (importer, imported) module pairs behind it."""
    out: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for m in MODULES:
        for t in imports(m):
            if node(m) != node(t):
                out.setdefault((node(m), node(t)), set()).add((m, t))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for nxt in sorted(graph.get(n, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_cycle_finder_by_hand():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_cycle_between_subpackages():
    e = edges()
    graph: dict[str, set[str]] = {}
    for a, b in e:
        graph.setdefault(a, set()).add(b)
    cycle = find_cycle(graph)
    if cycle:
        why = [sorted(e[(a, b)]) for a, b in itertools.pairwise(cycle)]
        raise AssertionError(f"import cycle between subpackages {' -> '.join(cycle)}: {why}")


def test_nothing_imports_a_stage_module():
    stage_modules = {ref.split(":")[0] for pair in STAGES.values() for ref in pair}
    bad = sorted((m, t) for m in MODULES for t in imports(m) & stage_modules if node(m) != node(t))
    assert not bad, f"modules importing a stage module of another package (move the shared logic low): {bad}"


def test_eval_does_not_import_the_prefer_stage_package():
    bad = sorted((m, t) for m in MODULES if node(m) == "eval" for t in imports(m) if t.startswith("rayalign.prefer"))
    assert not bad, bad


def test_checks_stay_low():
    """Constraint checks import nothing above them (generate, eval's stage, rl use them)."""
    above = sorted(t for t in imports("rayalign.checks") if node(t) not in ("config", "storage", "results", "checks"))
    assert not above, f"rayalign.checks imports {above}"


def package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def test_no_module_cycle_inside_a_package():
    """Within one package the modules import one another one way too (a package's `__init__`
    re-exporting its own submodules is the package's face, not an edge of the graph)."""
    graph: dict[str, set[str]] = {}
    for m in MODULES:
        for t in imports(m):
            if package_of(m) == package_of(t) and MODULES[m].name != "__init__.py":
                graph.setdefault(m, set()).add(t)
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between modules: {' -> '.join(cycle or [])}"


def test_module_cycle_finder_sees_a_two_module_circle():
    """The check above on a hand-made graph: trainer -> summary -> trainer is a cycle."""
    graph = {"t.trainer": {"t.summary", "t.loop"}, "t.summary": {"t.trainer"}, "t.loop": set()}
    assert find_cycle(graph) == ["t.summary", "t.trainer", "t.summary"]


def test_lower_packages_do_not_import_eval():
    """eval sits above train and generate: it uses their engines and trainer, never the reverse."""
    bad = sorted((m, t) for m in MODULES if node(m) in ("train", "generate") for t in imports(m) if node(t) == "eval")
    assert not bad, f"train/ or generate/ importing eval/: {bad}"
