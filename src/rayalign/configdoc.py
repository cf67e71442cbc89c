"""Every field of a stage's config: its path, type, default and meaning, read from the models.

    rayalign config sample              # a table of every field (nested sections as `engine.model`)
    rayalign config sample --yaml       # a commented YAML template that loads back as a valid config
    rayalign config pipeline            # the pipeline YAML of `rayalign run`; `serve`: `rayalign serve --config`
    rayalign config --markdown          # docs/config.md: every stage (`make docs` writes it)

A field's meaning is its pydantic `Field(description=...)`, else the comment on its line (or the
comment lines right above it) in the config class's source, so the source stays the one place a
field is explained. Defaults are the ones the stage really gets: a section whose default differs
from its class's (e.g. `sample`'s `params`) shows the stage's values.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

REQUIRED = PydanticUndefined
# configs that are not stages, documented the same way: name -> "module:Class"
OTHER_CONFIGS = {
    "pipeline": "rayalign.pipeline.spec:PipelineConfig",
    "serve": "rayalign.serve.config:ServeConfig",
}


@dataclass
class FieldDoc:
    """One row of a config's documentation; `section` rows head a nested config (their own fields follow)."""

    path: str
    type: str
    default: Any  # JSON-able value, or REQUIRED
    meaning: str
    section: bool = False
    depth: int = 0

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@cache
def source_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line(s), or the comment lines right above it, in `cls`'s source."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    tree = ast.parse(src)
    out: dict[str, str] = {}
    for node in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        last = lines[(node.end_lineno or node.lineno) - 1]
        trailing = _trailing_comment(last)
        above: list[str] = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        text = trailing or " ".join(above)
        if text:
            out[node.target.id] = text
    return out


def _trailing_comment(line: str) -> str:
    """The `# comment` at the end of a code line (a `#` inside a string literal is not one)."""
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[i + 1 :].strip()
    return ""


def meaning(cls: type[BaseModel], name: str) -> str:
    """A field's description: `Field(description=...)`, else its source comment (base classes too)."""
    field = cls.model_fields[name]
    if field.description:
        return " ".join(field.description.split())
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, BaseModel) and name in getattr(klass, "__annotations__", {}):
            text = source_comments(klass).get(name)
            if text:
                return text
    return ""


def type_name(ann: Any) -> str:
    """A short readable type: `int`, `str | None`, `"hf" | "vllm"`, `list[str]`, `EngineConfig`."""
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else base
    if ann is type(None):
        return "None"
    if isinstance(ann, type):
        return ann.__name__
    return str(ann).replace("typing.", "")


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _models_in(a)]


def _section_model(ann: Any) -> type[BaseModel] | None:
    """The model a field nests as a section (`engine: EngineConfig`, `pool: PoolConfig | None`), if
    it is one model (lists and dicts of models are documented as their item type's fields)."""
    found = _models_in(ann)
    return found[0] if len(found) == 1 else None


def _default(value: Any) -> Any:
    return value if value is REQUIRED else to_jsonable_python(value)


def describe(cls: type[BaseModel], instance: Any = None, prefix: str = "", depth: int = 0) -> list[FieldDoc]:
    """Every field of `cls`, nested sections expanded after their own row. `instance`: the section's
    default as the enclosing config sets it (its values override the class defaults)."""
    rows: list[FieldDoc] = []
    overlay: dict[str, Any] = dict(getattr(cls, "train_defaults", {}) or {}) if depth == 0 else {}
    for name, field in cls.model_fields.items():
        path = f"{prefix}{field.alias or name}" if field.alias and field.alias.isidentifier() else f"{prefix}{name}"
        if isinstance(instance, BaseModel):
            value: Any = getattr(instance, name)
        else:
            value = field.get_default(call_default_factory=True)
        sub = _section_model(field.annotation)
        items = list(dict.fromkeys(_models_in(field.annotation)))  # a list or dict of models (or of a union)
        container = typing.get_origin(field.annotation) in (list, dict) and bool(items)
        row = FieldDoc(path, type_name(field.annotation), _default(value), meaning(cls, name), depth=depth)
        if sub is None or container:
            rows.append(row)
            if container:
                item = "[]" if typing.get_origin(field.annotation) is list else ".<name>"
                for model in items:
                    rows += describe(model, None, f"{path}{item}.", depth + 1)
            continue
        row.section = True
        rows.append(row)
        inner = value if isinstance(value, BaseModel) else None
        sub_rows = describe(sub, inner, f"{path}.", depth + 1)
        for r in sub_rows:  # a composed run's defaults for its nested training run (e.g. name: prefer)
            key = r.path[len(path) + 1 :]
            if key in overlay and not r.section:
                r.default = _default(overlay[key])
        rows += sub_rows
    return rows


def config_class(name: str) -> type[BaseModel]:
    """The config class of a stage or of one of OTHER_CONFIGS."""
    import importlib

    from rayalign.stages import get_stage

    if name in OTHER_CONFIGS:
        module, cls = OTHER_CONFIGS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    return get_stage(name)[0]


def names() -> list[str]:
    from rayalign.stages import STAGES

    return sorted(STAGES) + sorted(OTHER_CONFIGS)


def stage_docs(stage: str) -> tuple[type[BaseModel], list[FieldDoc]]:
    cls = config_class(stage)
    return cls, describe(cls)


def _fmt_default(d: FieldDoc) -> str:
    if d.required:
        return "(required)"
    if d.section:
        return ""
    return json.dumps(d.default, ensure_ascii=False)


def format_table(stage: str, width: int = 100) -> str:
    """Plain text: one block per field, `path  type  = default` then its meaning, indented."""
    cls, rows = stage_docs(stage)
    out = [f"{stage}: {cls.__name__}" + (f" — {_first_line(cls.__doc__)}" if cls.__doc__ else ""), ""]
    for d in rows:
        head = f"{'  ' * d.depth}{d.path}: {d.type}"
        default = _fmt_default(d)
        if default:
            head += f" = {default}" if not d.required else f" {default}"
        out.append(head)
        if d.meaning:
            indent = "  " * d.depth + "    "
            out += textwrap.wrap(d.meaning, width, initial_indent=indent, subsequent_indent=indent)
    return "\n".join(out) + "\n"


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


# ---- the commented YAML template ----

PLACEHOLDERS: dict[str, Any] = {
    "output": "runs/{stage}",
    "output_dir": "runs/{stage}",
    "inputs": ["data/input.jsonl"],
    "prompts": ["data/prompts.jsonl"],
    "run_dir": "runs/my-run",
    "stages": [],
}


def _placeholder(stage: str, d: FieldDoc) -> Any:
    """A value of the right type for a required field (the first choice of a choice field)."""
    key = d.path.rsplit(".", 1)[-1]
    if key in PLACEHOLDERS:
        value = PLACEHOLDERS[key]
        return value.format(stage=stage) if isinstance(value, str) else value
    if d.type.startswith('"'):
        return json.loads(d.type.split(" | ")[0])
    return [f"<{key}>"] if d.type.startswith("list[") else f"<{key}>"


def yaml_template(stage: str) -> str:
    """A YAML config with every field at its default (required ones as placeholders to replace),
    each under a comment with its type and meaning; it validates as the stage's config as is."""
    cls, rows = stage_docs(stage)
    out = [f"# rayalign {stage} config ({cls.__name__}); every field at its default.", ""]
    skip: str | None = None
    for d in rows:
        if skip and d.path.startswith(skip):
            continue
        skip = None
        if "[]" in d.path or ".<name>." in d.path:
            continue  # item fields of a list/dict of models: documented under `rayalign config`
        indent = "  " * d.depth
        key = d.path.rsplit(".", 1)[-1]
        note = f"{d.type}" + (f": {d.meaning}" if d.meaning else "")
        for line in textwrap.wrap(note, 96 - len(indent)):
            out.append(f"{indent}# {line}")
        if d.section and (isinstance(d.default, dict) or d.required):
            out.append(f"{indent}{key}:")
            continue
        if d.section:  # a section whose default is None: left out (giving it turns it on)
            out.append(f"{indent}# {key}: {{...}}  (default null)")
            skip = d.path + "."
            continue
        if d.required:
            value, mark = _placeholder(stage, d), "  # required: replace"
        else:
            value, mark = d.default, ""
        dumped = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=10_000).strip()
        dumped = dumped[1:-1] if dumped.startswith("{") else dumped
        out.append(f"{indent}{dumped}{mark}")
    return "\n".join(out) + "\n"


# ---- docs/config.md ----


def markdown() -> str:
    """docs/config.md: every stage's fields as a table (generated; `make docs` rewrites it)."""
    md = [
        "# Stage configuration reference",
        "",
        "Generated from the config models by `rayalign config --markdown > docs/config.md` (`make docs`);",
        "a test fails when this file is out of date. `rayalign config STAGE` prints one stage's fields",
        "and `rayalign config STAGE --yaml` a commented template to start a config from.",
        "",
        "Nested sections are written `section.field`; in YAML they are nested mappings. `list[]` marks",
        "the fields of each item of a list, `.<name>` those of each value of a mapping.",
        "",
        "Stages: " + ", ".join(f"[{s}](#{s})" for s in names() if s not in OTHER_CONFIGS) + ". Other configs: "
        "[pipeline](#pipeline) (the YAML of `rayalign run`), [serve](#serve) (`rayalign serve --config`).",
        "",
    ]
    for stage in names():
        cls, rows = stage_docs(stage)
        md += [f"## {stage}", "", f"`{cls.__module__}.{cls.__name__}`" + _doc_sentence(cls), ""]
        md += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for d in rows:
            default = "**required**" if d.required else ("" if d.section else f"`{_md(_fmt_default(d))}`")
            md.append(f"| `{d.path}` | {_md(d.type)} | {default} | {_md(d.meaning)} |")
        md.append("")
    return "\n".join(md)


def _doc_sentence(cls: type) -> str:
    line = _first_line(cls.__doc__)
    return f": {line}" if line and cls.__doc__ != BaseModel.__doc__ else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    known = names()
    p = argparse.ArgumentParser(prog="rayalign config", description="list a stage's config fields")
    p.add_argument("stage", nargs="?", help=f"one of: {', '.join(known)}")
    p.add_argument("--yaml", action="store_true", help="print a commented YAML template instead")
    p.add_argument("--markdown", action="store_true", help="print docs/config.md (every stage)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    if not args.stage:
        p.print_usage(sys.stderr)
        print(f"rayalign config: name a stage: {', '.join(known)}", file=sys.stderr)
        return 2
    if args.stage not in known:
        print(f"rayalign config: unknown stage {args.stage!r}; available: {', '.join(known)}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml_template(args.stage) if args.yaml else format_table(args.stage))
    return 0
