"""`rayalign run`: the command line around the runner (logs, signals, exit codes)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rayalign import storage
from rayalign.config import ConfigError
from rayalign.pipeline.spec import PipelineConfig
from rayalign.pipeline.status import RUN_FILE
from rayalign.raycluster import ensure_ray, ray_running, shutdown_ray

LOG_DIR = "logs"
# lines in library logs worth one line of the user's attention (the rest stays in the log file)
WARNING_MARKS = ("WARNING", "Warning:", "warnings.warn", "UserWarning", "FutureWarning")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayalign run", description="run a pipeline YAML stage by stage")
    p.add_argument("pipeline", help="pipeline YAML (run_dir, defaults, stages)")
    p.add_argument("overrides", nargs="*", help="overrides, e.g. stages.sft.config.max_steps=5 run_dir=runs/x")
    p.add_argument("--dry-run", action="store_true", help="resolve and validate every stage config; run nothing")
    p.add_argument("--stop-after", metavar="NAME", help="stop after this stage")
    p.add_argument(
        "--progress",
        choices=("auto", "live", "plain", "json"),
        default="auto",
        help="auto: redrawn in place on a terminal, plain lines otherwise; json: one JSON object per update",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's, vLLM's and the stages' own logs here instead of in <run_dir>/logs/",
    )
    return p


def _real_stdout() -> bool:
    """True when stdout is this process's file descriptor 1 (not a stream replaced in-process)."""
    try:
        return sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def library_logs_to_file(run_dir: str, verbose: bool, as_json: bool = False) -> Iterator[tuple[IO[str], str | None]]:
    """Send file descriptors 1 and 2 (Ray, vLLM, stage prints, C++ warnings) to a log file.

    Yields (the stream the display writes to: the original stdout, the log's final path). With
    `verbose`, or when stdout is not the process's own descriptor, nothing is redirected. A log for
    a run folder on object storage is written locally and uploaded when the run ends. The closing
    line naming the log (and its count of warning lines) is a JSON object with `as_json`.
    """
    if verbose or not _real_stdout():
        yield sys.stdout, None
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    final = storage.join(run_dir, LOG_DIR, f"run-{stamp}.log")
    local = Path(final) if not storage.is_uri(run_dir) else Path(tempfile.mkdtemp(prefix="rayalign-log-")) / "run.log"
    local.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    display = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    with open(local, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield display, final
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
    if storage.is_uri(run_dir):
        with contextlib.suppress(OSError):
            storage.write_bytes(final, local.read_bytes())
    _warning_line(local, final, display, as_json)
    display.close()
    if storage.is_uri(run_dir):
        shutil.rmtree(local.parent, ignore_errors=True)


def _warning_line(local: Path, final: str, out: IO[str], as_json: bool = False) -> None:
    try:
        lines = local.read_text(errors="replace").splitlines()
    except OSError:
        return
    n = sum(any(m in line for m in WARNING_MARKS) for line in lines)
    if as_json:
        out.write(json.dumps({"event": "logs", "path": final, "warning_lines": n}) + "\n")
    elif n:
        out.write(f"{n} warning line(s) from Ray, vLLM and other libraries; full logs: {final}\n")
    else:
        out.write(f"logs: {final}\n")
    out.flush()


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _run(pipe: PipelineConfig, args: argparse.Namespace) -> None:
    """Run with library output in the run's log, SIGTERM as Ctrl-C, and Ray stopped at the end."""
    from rayalign.pipeline.render import make_display
    from rayalign.pipeline.runner import run_pipeline, validate_pipeline

    validate_pipeline(pipe, args.pipeline)  # before Ray starts: a config error costs nothing
    resume = "rayalign run " + " ".join(shlex.quote(a) for a in [args.pipeline, *args.overrides])
    # what `rayalign status RUN_DIR` reads to list pending stages and print the command that resumes
    storage.makedirs(pipe.run_dir)
    storage.write_json(
        storage.join(pipe.run_dir, RUN_FILE),
        {"command": resume, "pipeline": str(Path(args.pipeline).resolve()), "overrides": list(args.overrides)},
    )
    ray_before = ray_running()
    with library_logs_to_file(pipe.run_dir, args.verbose, args.progress == "json") as (stream, _):
        display = make_display(stream, mode=args.progress)
        try:
            if pipe.start_ray:
                ensure_ray()
            # after ray.init, which installs a SIGTERM handler of its own: a scheduler's stop
            # unwinds like Ctrl-C, so the stage is recorded and the cluster shut down below
            signal.signal(signal.SIGTERM, _sigterm)
            run_pipeline(pipe, source=args.pipeline, resume_cmd=resume, stop_after=args.stop_after, display=display)
        finally:
            display.close()
            if not ray_before:
                shutdown_ray()


def main(argv: list[str] | None = None) -> int:
    from rayalign.pipeline.runner import StageFailed, validate_pipeline
    from rayalign.pipeline.spec import load_pipeline, steps

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        pipe = load_pipeline(args.pipeline, args.overrides)
        if args.dry_run:
            cfgs = validate_pipeline(pipe, args.pipeline)
            for step, cfg in zip(steps(pipe), cfgs):
                print(f"ok {step.id} ({step.spec.stage}): {json.dumps(cfg.model_dump(mode='json'))[:160]}")
            return 0
        _run(pipe, args)
        return 0
    except ConfigError as e:
        print(f"rayalign run: config error: {e}", file=sys.stderr)
        return e.exit_code
    except StageFailed as e:
        print(f"rayalign run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rayalign run: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
