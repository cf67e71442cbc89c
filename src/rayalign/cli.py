"""`rayalign <stage> CONFIG.yaml [key.sub=value ...]`, `rayalign run PIPELINE.yaml`, `rayalign serve ...`,
`rayalign config STAGE [--yaml]` (a stage's fields), `rayalign status RUN_DIR` (a run's state).

Exit codes: 0 success, 1 a stage failed, 2 a configuration error (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import sys

from rayalign.config import ConfigError


def _stage_main(stage: str, argv: list[str]) -> int:
    from rayalign.raycluster import ray_running, shutdown_ray
    from rayalign.stages import run_stage

    p = argparse.ArgumentParser(prog=f"rayalign {stage}", description=f"run the {stage} stage")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = p.parse_args(argv)
    ray_before = ray_running()
    try:
        result = run_stage(stage, args.config, args.overrides)
    finally:
        if not ray_before:  # before exit: an interrupted dataset's threads are joined first
            shutdown_ray()
    print(json.dumps(result.to_json(), indent=2, default=str)[:4000])
    return 0


def job_main(stage: str, doc: str, argv: list[str] | None = None) -> int:
    """Entry point shared by the `rayjobs/<stage>.py` scripts: `python rayjobs/X.py CONFIG [overrides]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(doc)
        return 0 if argv else 2
    try:
        return _stage_main(stage, argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return e.exit_code


# commands that are not stages: name -> "module:function(argv) -> exit code", imported lazily
COMMANDS: dict[str, str] = {
    "run": "rayalign.pipeline:main",
    "serve": "rayalign.serve.cli:main",
    "inspect": "rayalign.data.inspect:main",
    "export": "rayalign.models.export:main",
    "config": "rayalign.configdoc:main",
    "status": "rayalign.pipeline.status:main",
}


def _command(ref: str):
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    from rayalign.stages import STAGES

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = sorted(STAGES) + sorted(c for c in COMMANDS if c not in STAGES)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: rayalign <command> [args]\n\ncommands:\n  "
            + "\n  ".join(commands)
            + "\n\n`rayalign <command> --help` for a command's arguments."
        )
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd in COMMANDS and cmd not in STAGES:
            return int(_command(COMMANDS[cmd])(rest))
        if cmd not in STAGES:
            print(f"rayalign: unknown command {cmd!r}; available: {', '.join(commands)}", file=sys.stderr)
            return 2
        return _stage_main(cmd, rest)
    except ConfigError as e:
        print(f"rayalign: config error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rayalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
