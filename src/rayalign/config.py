"""Typed configs: every component owns a pydantic model; YAML files plus `key.sub=value` overrides.

A bad config fails before any work starts, with an error that names the file, the field path, the
bad value and what is allowed. The CLI turns `ConfigError` into exit code 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

T = TypeVar("T", bound="Cfg")

CONFIG_EXIT_CODE = 2


_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float": "fp32"}


def _dtype_alias(value: Any) -> Any:
    return _DTYPE_ALIASES.get(value, value) if isinstance(value, str) else value


# The one dtype vocabulary of every config (train, engines, reference, eval). `auto` means bf16 on a
# GPU and fp32 on a CPU (bf16 is slower on CPUs and changes greedy outputs of small models). The long
# torch names are accepted and normalised, so a bad value fails at validation (`--dry-run`), not at load.
DType = Annotated[Literal["auto", "fp32", "bf16", "fp16"], BeforeValidator(_dtype_alias)]


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message says where and how."""

    exit_code = CONFIG_EXIT_CODE


class Cfg(BaseModel):
    """Base of every config: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # Fields that say how much hardware to use, not what to compute (pool sizes, workers, CPUs/GPUs
    # per actor, memory fractions). They are left out of `hash()`, so resuming a half-finished stage
    # with more workers continues its finished shards instead of redoing them. A whole sub-config
    # can opt out with `resource_config = True` (e.g. the actor-pool settings).
    resource_fields: ClassVar[frozenset[str]] = frozenset()
    resource_config: ClassVar[bool] = False

    @classmethod
    def accepted_keys(cls) -> set[str]:
        """Top-level keys a YAML may give (a composed config that routes flat keys widens this)."""
        return set(cls.model_fields)

    def hash_data(self) -> dict[str, Any]:
        """The config as JSON, minus resource fields at every level (see `resource_fields`)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            if name in self.resource_fields:
                continue
            value = getattr(self, name)
            if isinstance(value, Cfg):
                if value.resource_config:
                    continue
                out[name] = value.hash_data()
            else:
                out[name] = _plain(value)
        return out

    def hash(self) -> str:
        """Stable hash of what changes results, used to tell whether finished output still matches."""
        return digest(self.hash_data())


def digest(data: Any) -> str:
    """The 16-hex-digit hash of JSON-able data (keys sorted): config hashes are made of this."""
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, Cfg):
        return value.hash_data()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], value parsed as YAML so numbers, bools and lists work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r}: empty key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a {type(nxt).__name__}, not a section")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _allowed_keys(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Walk the model along `loc` (minus its last part) and list the keys allowed there."""
    model: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = _first_model(ann)
    return sorted(getattr(model, "model_fields", {}).keys()) if model else []


def _first_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(cls: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid {cls.__name__} ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e.get("type") == "extra_forbidden":
            allowed = _allowed_keys(cls, loc)
            hint = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  - {path}: unknown key{hint}")
        elif e.get("type") == "missing":
            lines.append(f"  - {path}: required field is missing")
        else:
            lines.append(f"  - {path}: {e.get('msg')} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_config(cls: type[T], data: dict, source: str = "<config>") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(cls, err, source)) from None


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> T:
    """Load `cls` from a YAML file (or a dict), apply overrides, validate. Raises ConfigError."""
    base = dict(data or {})
    source = "<overrides>"
    if path is not None:
        base = read_yaml(path)
        source = str(path)
    base = apply_overrides(base, overrides)
    return validate_config(cls, base, source)
