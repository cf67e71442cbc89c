"""`${...}` references in stage configs, resolved against what earlier stages recorded.

`resolve(value, scope, where)` returns the resolved value together with the set of stage instances
it read, so the caller (the runner's hash of a stage's upstream) knows what the value depends on;
nothing is written into the scope.

Forms: `${run_dir}`, `${defaults.KEY}`, `${stages.NAME.KEY[.SUB...]}`, `${round.index}`,
`${round.times}`, `${round.prev.NAME.KEY...}`, and fallbacks `${A | B}` (the first alternative
that exists; `round.prev` does not exist in round 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rayalign.config import ConfigError
from rayalign.pipeline.spec import Step
from rayalign.results import StageResult

REF = re.compile(r"\$\{([^}]+)\}")
RESULT_FIELDS = ("output", "checkpoint", "counts", "metrics", "details")


class Unresolved(str):
    """Placeholder for a reference to a result that does not exist yet (dry runs, schema checks)."""


class Missing(ConfigError):
    """A reference whose target does not exist here; a `|` fallback may still resolve."""


@dataclass(frozen=True)
class Entry:
    """What the runner knows about a finished (or, in dry runs, validated) stage instance."""

    config: dict[str, Any]
    result: StageResult | None
    hash: str = ""


@dataclass(frozen=True)
class Scope:
    """Everything a reference can read while one step's config is resolved.

    `entries` maps step ids (`sft`, `round-2/prefer`) of earlier steps to their `Entry`; `names`
    maps a stage name to the id that `${stages.NAME}` means at this point: this round's instance
    inside a repeat group, the last round's after it.
    """

    run_dir: str
    defaults: dict[str, Any]
    entries: dict[str, Entry] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    step: Step | None = None


def resolve(value: Any, scope: Scope, where: str) -> tuple[Any, frozenset[str]]:
    """(value with references replaced, step ids it read). Dicts and lists are walked."""
    used: set[str] = set()
    out = _interpolate(value, scope, where, used)
    return out, frozenset(used)


def interpolate(value: Any, scope: Scope, where: str) -> Any:
    return resolve(value, scope, where)[0]


def _interpolate(value: Any, scope: Scope, where: str, used: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, scope, f"{where}.{k}", used) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, scope, f"{where}[{i}]", used) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = REF.fullmatch(value.strip())
    if whole:
        return _alternatives(scope, whole.group(1), where, used)
    return REF.sub(lambda m: str(_alternatives(scope, m.group(1), where, used)), value)


def _alternatives(scope: Scope, ref: str, where: str, used: set[str]) -> Any:
    options = [r.strip() for r in ref.split("|")]
    first: Missing | None = None
    for option in options:
        try:
            return _lookup(scope, option, where, used)
        except Missing as e:
            first = first or e
    assert first is not None
    raise first


def _lookup(scope: Scope, ref: str, where: str, used: set[str]) -> Any:
    parts = ref.split(".")
    if parts == ["run_dir"]:
        return scope.run_dir
    if parts[0] == "defaults" and len(parts) >= 2:
        return _walk(scope.defaults, parts[1:], ref, where)
    if parts[0] == "stages" and len(parts) >= 3:
        return _stage_value(scope, _visible_id(scope, parts[1], ref, where), parts[2:], ref, where, used)
    if parts[0] == "round" and len(parts) >= 2:
        return _round_value(scope, parts[1:], ref, where, used)
    raise ConfigError(
        f"{where}: cannot resolve ${{{ref}}}; use ${{run_dir}}, ${{defaults.KEY}}, "
        f"${{stages.NAME.KEY}} or ${{round.prev.NAME.KEY}}"
    )


def _visible_id(scope: Scope, name: str, ref: str, where: str) -> str:
    step = scope.step
    if step is not None and step.round is not None and name in step.group:
        this_round = f"round-{step.round}/{name}"
        if this_round in scope.entries:
            return this_round
        raise Missing(
            f"{where}: ${{{ref}}}: stage {name!r} comes later in this round; use "
            f"${{round.prev.{name}...}} for the previous round's"
        )
    if name not in scope.names:
        earlier = ", ".join(scope.names) or "none"
        raise Missing(
            f"{where}: ${{{ref}}} refers to stage {name!r}, which is not an earlier stage (earlier stages: {earlier})"
        )
    return scope.names[name]


def _round_value(scope: Scope, parts: list[str], ref: str, where: str, used: set[str]) -> Any:
    step = scope.step
    if step is None or step.round is None:
        raise Missing(f"{where}: ${{{ref}}} is only defined inside a repeat group")
    if parts == ["index"]:
        return step.round
    if parts == ["times"]:
        return step.times
    if parts[0] == "prev" and len(parts) >= 3:
        if step.round == 1:
            raise Missing(
                f"{where}: ${{{ref}}}: round 1 has no previous round; add a fallback, e.g. ${{{ref} | stages.NAME.KEY}}"
            )
        prev = f"round-{step.round - 1}/{parts[1]}"
        if prev not in scope.entries:
            raise ConfigError(f"{where}: ${{{ref}}}: no stage {parts[1]!r} in the previous round")
        return _stage_value(scope, prev, parts[2:], ref, where, used)
    raise ConfigError(f"{where}: cannot resolve ${{{ref}}}; use round.index, round.times or round.prev.NAME.KEY")


def _stage_value(scope: Scope, step_id: str, keys: list[str], ref: str, where: str, used: set[str]) -> Any:
    used.add(step_id)  # returned to the caller: this stage now depends on `step_id`
    entry = scope.entries[step_id]
    if keys[0] == "config" and len(keys) >= 2:  # explicit: the stage's resolved config
        return _walk(entry.config, keys[1:], ref, where)
    result = entry.result.to_json() if entry.result is not None else None
    if result is not None and keys[0] in RESULT_FIELDS and result.get(keys[0]) is not None:
        return _walk(result, keys, ref, where)
    if keys[0] in entry.config and not (result is None and isinstance(entry.config[keys[0]], dict)):
        return _walk(entry.config, keys, ref, where)
    if result is None:
        # the stage has not run (dry run): its result is unknown yet. A config *section* of the
        # same name (a training stage's `checkpoint:` settings) is not what
        # `${stages.sft.checkpoint}` means, so it stays a placeholder too.
        return Unresolved(f"<{ref}>")
    known = sorted(k for k in RESULT_FIELDS if result.get(k) is not None)
    raise ConfigError(
        f"{where}: ${{{ref}}}: stage {step_id!r} has no {keys[0]!r} in its result "
        f"({', '.join(known)}) or config ({', '.join(sorted(entry.config))})"
    )


def _walk(node: Any, keys: list[str], ref: str, where: str) -> Any:
    for k in keys:
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        else:
            raise ConfigError(f"{where}: ${{{ref}}}: no key {k!r} there")
    return node
