"""`rayalign run PIPELINE.yaml [stages.NAME.config.KEY=VALUE ...]`: run a pipeline's stages in order.

    rayalign run rayjobs/configs/quickstart.yaml
    rayalign run rayjobs/configs/quickstart.yaml stages.sft.config.max_steps=5 run_dir=runs/try2
    rayalign run rayjobs/configs/quickstart.yaml --dry-run      # validate every stage config, run nothing

A pipeline YAML:

    run_dir: runs/quickstart              # every stage writes under <run_dir>/<name>/
    defaults: {model: builtin:smollm2-135m-instruct}
    stages:
      - name: chat                         # unique, used in paths, references and overrides
        stage: prepare                     # a name from the stage registry (rayalign.stages)
        config: {kind: chat, inputs: [rayjobs/data/chat.jsonl]}
      - name: sft
        stage: sft
        config: {data: "${stages.chat.output}", max_steps: 20}

Rules, in the order they apply to each stage's `config`:
1. `defaults`: a key is copied into a stage's config when the stage's config class has that field
   and the stage does not set it (so `model` reaches every stage that takes a model).
2. `output` / `output_dir`: when the config class has such a field and the stage leaves it out, it
   becomes `<run_dir>/<name>`.
3. `${...}` references: `${run_dir}`, `${defaults.KEY}`, `${stages.NAME.KEY[.SUB...]}`. A stage
   reference looks the key up in that (earlier) stage's result dict first — e.g. `checkpoint`
   of a training stage, `counts` of a dataset stage — then in its resolved config (e.g. `output`).
   `${stages.NAME.config.KEY}` always reads the config. A string that is exactly one reference
   takes the referenced value with its type; a reference inside a longer string is pasted in as
   text. `--dry-run` validates configs before any stage ran: references to results not known yet
   become placeholder strings such as "<stages.sft.checkpoint>".

A finished stage records `<run_dir>/<name>/stage.json` (status, config hash, result); a re-run
skips a stage whose record is complete with an equal hash — of its config and of the earlier
stages it references, so a change upstream re-runs everything downstream of it (a completed stage
that must re-run has `<run_dir>/<name>/` cleared first) — and re-runs a half-finished one,
which resumes on its own (dataset stages skip finished shards; training stages restart from their
last checkpoint). A failed stage stops the run, records the error, and prints the command that
resumes. At the end `<run_dir>/summary.json` lists every stage's outputs, counts and key metrics,
and `final_model`: the `final_model` key of the pipeline YAML if given, otherwise the `checkpoint`
of the last stage that produced one.

Overrides address stages by name: `stages.sft.config.max_steps=5`, `defaults.model=...`,
`run_dir=...`. Exit codes: 0 done, 1 a stage failed, 2 a configuration error.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import Field

from rayalign.config import Cfg, ConfigError, parse_override, read_yaml, validate_config

STAGE_RECORD = "stage.json"
SUMMARY = "summary.json"
# result keys too bulky for summaries (per-shard reports stay in the stage's own manifest)
BULKY_KEYS = ("shards",)
OUTPUT_FIELDS = ("output", "output_dir")
REF = re.compile(r"\$\{([^}]+)\}")


class StageSpec(Cfg):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    stage: str
    config: dict[str, Any] = {}
    # a dataset stage that read rows but wrote none (everything quarantined) fails the run here,
    # where the cause is, instead of a later stage failing on an empty input; true allows it
    allow_empty: bool = False


class PipelineConfig(Cfg):
    run_dir: str
    defaults: dict[str, Any] = {}
    stages: list[StageSpec]
    final_model: str | None = None  # may be a reference, e.g. ${stages.prefer.checkpoint}
    # connect to (or start) Ray once before the first stage so every stage shares one cluster;
    # false leaves it to the stages that need Ray (handy for in-process tests)
    start_ray: bool = True


# ---------------------------------------------------------------------------------------------
# loading: YAML + overrides that address stages by name


def apply_pipeline_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Like config.apply_overrides, but `stages.<name>` selects the list item with that name."""
    for item in overrides or []:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
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


def _stage_item(stages: list, key: str, item: str) -> dict:
    for s in stages:
        if isinstance(s, dict) and s.get("name") == key:
            return s
    if key.isdigit() and int(key) < len(stages):
        return stages[int(key)]
    names = [s.get("name") for s in stages if isinstance(s, dict)]
    raise ConfigError(f"override {item!r}: no stage named {key!r}; stages: {', '.join(map(str, names))}")


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    data = apply_pipeline_overrides(read_yaml(path), overrides)
    cfg = validate_config(PipelineConfig, data, str(path))
    seen: set[str] = set()
    for s in cfg.stages:
        if s.name in seen:
            raise ConfigError(f"{path}: stage name {s.name!r} is used twice; names must be unique")
        seen.add(s.name)
    return cfg


# ---------------------------------------------------------------------------------------------
# resolving one stage's config


class _Unresolved(str):
    """Placeholder for a reference to a result that does not exist yet (dry runs, schema checks)."""


def _lookup(ctx: dict, ref: str, where: str) -> Any:
    parts = ref.strip().split(".")
    if parts[0] == "run_dir" and len(parts) == 1:
        return ctx["run_dir"]
    if parts[0] == "defaults" and len(parts) >= 2:
        return _walk(ctx["defaults"], parts[1:], ref, where)
    if parts[0] == "stages" and len(parts) >= 3:
        name = parts[1]
        ctx.setdefault("used", set()).add(name)  # this stage now depends on `name` (see stage_hash)
        if name not in ctx["stages"]:
            earlier = ", ".join(ctx["stages"]) or "none"
            raise ConfigError(f"{where}: ${{{ref}}} refers to stage {name!r}, which is not an earlier stage "
                              f"(earlier stages: {earlier})")
        entry = ctx["stages"][name]
        result, config = entry["result"], entry["config"]
        if parts[2] == "config" and len(parts) >= 4:  # explicit: the stage's resolved config
            return _walk(config, parts[3:], ref, where)
        if result is not None and parts[2] in result:
            return _walk(result, parts[2:], ref, where)
        if parts[2] in config and not (result is None and isinstance(config[parts[2]], dict)):
            return _walk(config, parts[2:], ref, where)
        if result is None:
            # the stage has not run (dry run): its result keys are unknown yet. A config *section*
            # of the same name (a training stage's `checkpoint:` settings) is not what
            # `${stages.sft.checkpoint}` means, so it stays a placeholder too.
            return _Unresolved(f"<{ref}>")
        raise ConfigError(f"{where}: ${{{ref}}}: stage {name!r} has no {parts[2]!r} in its result "
                          f"({', '.join(sorted(result))}) or config ({', '.join(sorted(config))})")
    raise ConfigError(f"{where}: cannot resolve ${{{ref}}}; use ${{run_dir}}, ${{defaults.KEY}} or "
                      f"${{stages.NAME.KEY}}")


def _walk(node: Any, keys: list[str], ref: str, where: str) -> Any:
    for k in keys:
        if isinstance(node, dict) and k in node:
            node = node[k]
        elif isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        else:
            raise ConfigError(f"{where}: ${{{ref}}}: no key {k!r} there")
    return node


def interpolate(value: Any, ctx: dict, where: str) -> Any:
    """Replace `${...}` references in strings anywhere inside `value` (dicts and lists walked)."""
    if isinstance(value, dict):
        return {k: interpolate(v, ctx, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, ctx, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = REF.fullmatch(value.strip())
    if whole:
        return _lookup(ctx, whole.group(1), where)
    return REF.sub(lambda m: str(_lookup(ctx, m.group(1), where)), value)


def stage_dir(run_dir: str, name: str) -> Path:
    return Path(run_dir) / name


def resolve_stage(pipe: PipelineConfig, index: int, ctx: dict, source: str = "<pipeline>"):
    """(config class instance, run function, hash) for stage `index`, references resolved against `ctx`."""
    from rayalign.stages import get_stage

    spec = pipe.stages[index]
    where = f"{source}: stages[{index}] ({spec.name})"
    try:
        cfg_cls, run_fn = get_stage(spec.stage)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    fields = cfg_cls.model_fields
    raw = copy.deepcopy(spec.config)
    for key, val in pipe.defaults.items():
        if key in fields and key not in raw:
            raw[key] = copy.deepcopy(val)
    for key in OUTPUT_FIELDS:  # dataset stages name it `output`, training stages `output_dir`
        if key in fields and key not in raw:
            raw[key] = str(stage_dir(pipe.run_dir, spec.name))
    ctx["used"] = set()
    raw = interpolate(raw, ctx, f"{where}.config")
    cfg = validate_config(cfg_cls, raw, where)
    return cfg, run_fn, stage_hash(spec, cfg, ctx)


def stage_hash(spec: StageSpec, cfg: Cfg, ctx: dict) -> str:
    """The stage's config hash combined with the hashes of the earlier stages it references.

    Without the second part a stage would be skipped after its input changed under the same path
    (sft re-trained with a new lr still writes checkpoints/step-000020): a change upstream now
    re-runs every stage that reads from it, transitively.
    """
    upstream = sorted((n, ctx["stages"][n].get("hash", "")) for n in ctx.get("used", ()) if n in ctx["stages"])
    blob = json.dumps([spec.stage, cfg.hash(), upstream])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def new_context(pipe: PipelineConfig) -> dict:
    return {"run_dir": pipe.run_dir, "defaults": pipe.defaults, "stages": {}}


def validate_pipeline(pipe: PipelineConfig, source: str = "<pipeline>") -> list[Cfg]:
    """Resolve and validate every stage's config without running anything (results as placeholders)."""
    ctx, cfgs = new_context(pipe), []
    for i, spec in enumerate(pipe.stages):
        cfg, _, h = resolve_stage(pipe, i, ctx, source)
        ctx["stages"][spec.name] = {"config": cfg.model_dump(mode="json"), "result": None, "hash": h}
        cfgs.append(cfg)
    return cfgs


# ---------------------------------------------------------------------------------------------
# records


def clear_stage_dir(run_dir: str, name: str) -> None:
    """Remove everything in `<run_dir>/<name>/` except the stage record (outputs placed elsewhere
    by an explicit `output:` are left alone; their own stage decides whether they still match)."""
    d = stage_dir(run_dir, name)
    for child in d.iterdir() if d.exists() else ():
        if child.name == STAGE_RECORD:
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def read_record(run_dir: str, name: str) -> dict | None:
    p = stage_dir(run_dir, name) / STAGE_RECORD
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except json.JSONDecodeError:
        return None  # a torn write: treat the stage as not finished


def write_record(run_dir: str, name: str, record: dict) -> None:
    p = stage_dir(run_dir, name) / STAGE_RECORD
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, p)  # atomic: a kill mid-write never leaves a half record


def _jsonable(result: Any) -> dict:
    if not isinstance(result, dict):
        result = {"value": result}
    trimmed = {k: v for k, v in result.items() if k not in BULKY_KEYS}
    return json.loads(json.dumps(trimmed, default=str))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stage_summary(spec: StageSpec, record: dict, skipped: bool) -> dict:
    result = record.get("result") or {}
    # key metrics: the result's top-level numbers (steps, final_loss, packing_efficiency, ...) and
    # its `metrics` dict when it has one (eval's accuracies, a training stage's last logged step)
    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if isinstance(result.get("metrics"), dict):
        metrics.update(result["metrics"])
    config = record.get("config") or {}
    output = next((config[k] for k in OUTPUT_FIELDS if config.get(k)), None)
    return {
        "name": spec.name, "stage": spec.stage, "status": record.get("status"), "skipped": skipped,
        "seconds": record.get("seconds"), "config_hash": record.get("config_hash"),
        "output": output, "checkpoint": result.get("checkpoint"),
        "counts": result.get("counts"), "metrics": metrics, "result": result,
    }


# ---------------------------------------------------------------------------------------------
# running


def run_pipeline(pipe: PipelineConfig, *, source: str = "<pipeline>", resume_cmd: str | None = None,
                 stop_after: str | None = None, console=None) -> dict:
    """Run every stage in order, skipping finished ones. Returns the summary (also written to disk).

    Raises `StageFailed` when a stage raises (its record then says `failed` with the error).
    """
    from rich.console import Console

    console = console or Console(highlight=False)
    validate_pipeline(pipe, source)  # a typo in the last stage fails now, not after hours of work
    run_dir = pipe.run_dir
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    if pipe.start_ray:
        from rayalign.raycluster import ensure_ray

        ensure_ray()
    ctx = new_context(pipe)
    summaries: list[dict] = []
    t_run = time.time()
    n = len(pipe.stages)
    for i, spec in enumerate(pipe.stages):
        cfg, run_fn, h = resolve_stage(pipe, i, ctx, source)
        cfg_json = cfg.model_dump(mode="json")
        old = read_record(run_dir, spec.name)
        title = f"[{i + 1}/{n}] {spec.name} ({spec.stage})"
        if old and old.get("status") == "complete" and old.get("config_hash") == h:
            console.print(f"[green]✓ {title}: already complete (config {h}); skipping[/green]")
            record, skipped = old, True
        else:
            if old and old.get("status") == "complete":
                console.print(f"[yellow]{title}: its config or an upstream stage changed ({old.get('config_hash')} "
                              f"→ {h}); clearing {stage_dir(run_dir, spec.name)} and running again[/yellow]")
                # the stage's own resume (finished shards, checkpoints) must not reuse stale work
                clear_stage_dir(run_dir, spec.name)
            elif old and old.get("status") in ("running", "failed"):
                console.print(f"[yellow]{title}: resuming an unfinished run ({old.get('status')} since "
                              f"{old.get('started')})[/yellow]")
            console.rule(f"[bold]{title}")
            record = {"name": spec.name, "stage": spec.stage, "status": "running", "config_hash": h,
                      "config": cfg_json, "started": _now(), "result": None}
            write_record(run_dir, spec.name, record)
            t0 = time.time()
            try:
                result = run_fn(cfg)
                check_not_empty(spec, result)
            except BaseException as e:  # record the failure (also on Ctrl-C), then stop the run
                record.update(status="failed", finished=_now(), seconds=round(time.time() - t0, 3),
                              error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-8000:])
                write_record(run_dir, spec.name, record)
                _write_summary(pipe, summaries + [stage_summary(spec, record, False)], t_run, status="failed")
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                raise StageFailed(spec.name, spec.stage, record["error"], resume_cmd) from e
            record.update(status="complete", finished=_now(), seconds=round(time.time() - t0, 3),
                          result=_jsonable(result))
            write_record(run_dir, spec.name, record)
            skipped = False
            console.print(f"[green]✓ {title}: done in {record['seconds']:.1f}s[/green]")
        ctx["stages"][spec.name] = {"config": record.get("config") or cfg_json, "result": record.get("result") or {},
                                    "hash": h}
        summaries.append(stage_summary(spec, record, skipped))
        _write_summary(pipe, summaries, t_run, status="running")
        if stop_after and spec.name == stop_after:
            console.print(f"stopping after {spec.name} as asked (--stop-after)")
            break
    done = len(summaries) == n
    summary = _write_summary(pipe, summaries, t_run, status="complete" if done else "partial", ctx=ctx)
    print_table(summary, console)
    return summary


def check_not_empty(spec: StageSpec, result: Any) -> None:
    counts = result.get("counts") if isinstance(result, dict) else None
    if spec.allow_empty or not isinstance(counts, dict):
        return
    if counts.get("in", 0) > 0 and counts.get("out_rows", 1) == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in (counts.get("by_reason") or {}).items()) or "none recorded"
        raise EmptyOutput(f"read {counts['in']} rows but wrote none (quarantined by reason: {reasons}); "
                          f"see its quarantine/ folder, or set allow_empty: true on the stage")


class EmptyOutput(RuntimeError):
    """A dataset stage produced no rows: everything downstream would fail on an empty input."""


def _final_model(pipe: PipelineConfig, summaries: list[dict], ctx: dict | None) -> str | None:
    if pipe.final_model and ctx is not None:
        value = interpolate(pipe.final_model, ctx, "final_model")
        return None if isinstance(value, _Unresolved) else str(value)
    for s in reversed(summaries):
        if s.get("checkpoint"):
            return str(s["checkpoint"])
    return None


def _write_summary(pipe: PipelineConfig, summaries: list[dict], t_run: float, status: str,
                   ctx: dict | None = None) -> dict:
    summary = {
        "run_dir": pipe.run_dir, "status": status, "updated": _now(),
        "seconds": round(time.time() - t_run, 3),
        "stages": summaries, "final_model": _final_model(pipe, summaries, ctx),
    }
    p = Path(pipe.run_dir) / SUMMARY
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, p)
    return summary


def print_table(summary: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"pipeline {summary['run_dir']}: {summary['status']}")
    for col in ("stage", "kind", "status", "seconds", "rows in/ok/out"):
        t.add_column(col)
    t.add_column("key metrics", overflow="fold")
    for s in summary["stages"]:
        c = s.get("counts") or {}
        rows = f"{c.get('in', '')}/{c.get('ok', '')}/{c.get('out_rows', '')}" if c else ""
        metrics = "\n".join(f"{k}={_fmt(v)}" for k, v in list((s.get("metrics") or {}).items())[:4])
        status = s["status"] + (" (skipped)" if s.get("skipped") else "")
        t.add_row(s["name"], s["stage"], status, _fmt(s.get("seconds")), rows, metrics)
    console.print(t)
    if summary.get("final_model"):
        console.print(f"final model: {summary['final_model']}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


class StageFailed(RuntimeError):
    def __init__(self, name: str, stage: str, error: str, resume_cmd: str | None):
        self.name, self.stage, self.error, self.resume_cmd = name, stage, error, resume_cmd
        msg = f"stage {name!r} ({stage}) failed: {error}"
        if resume_cmd:
            msg += f"\nfix the cause, then resume (finished stages are skipped):\n    {resume_cmd}"
        super().__init__(msg)


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    p = argparse.ArgumentParser(prog="rayalign run", description="run a pipeline YAML stage by stage")
    p.add_argument("pipeline", help="pipeline YAML (run_dir, defaults, stages)")
    p.add_argument("overrides", nargs="*", help="overrides, e.g. stages.sft.config.max_steps=5 run_dir=runs/x")
    p.add_argument("--dry-run", action="store_true", help="resolve and validate every stage config; run nothing")
    p.add_argument("--stop-after", metavar="NAME", help="stop after this stage")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    console = Console(highlight=False)
    try:
        pipe = load_pipeline(args.pipeline, args.overrides)
        if args.dry_run:
            cfgs = validate_pipeline(pipe, args.pipeline)
            for spec, cfg in zip(pipe.stages, cfgs):
                print(f"ok {spec.name} ({spec.stage}): {json.dumps(cfg.model_dump(mode='json'))[:160]}")
            return 0
        resume = "rayalign run " + " ".join(shlex.quote(a) for a in [args.pipeline, *args.overrides])
        run_pipeline(pipe, source=args.pipeline, resume_cmd=resume, stop_after=args.stop_after, console=console)
        return 0
    except ConfigError as e:
        print(f"rayalign run: config error: {e}", file=sys.stderr)
        return e.exit_code
    except StageFailed as e:
        print(f"rayalign run: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
