"""Quickstart: the whole alignment pipeline on the embedded default (SmolLM2-135M-Instruct, CPU, no downloads).

    make quickstart                                   # = python rayjobs/quickstart.py
    python rayjobs/quickstart.py run_dir=runs/qs2     # any pipeline override works
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python rayjobs/quickstart.py

sample → clair → reference → prefer (APO-zero) → eval, as listed in rayjobs/configs/quickstart.yaml:
the model's own answers to prompts with checkable instructions, each failing answer paired with its
minimal revision, APO on those pairs, then base vs aligned on the held-out verifiable suite.
Re-running skips finished stages; a killed run resumes. At the end it prints the evaluation headline
(base vs aligned) and the command that serves the aligned model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from rayalign import storage
from rayalign.eval.stats import kinds_down
from rayalign.pipeline import load_pipeline, read_summary
from rayalign.pipeline import main as run_pipeline

CONFIG = Path(__file__).parent / "configs" / "quickstart.yaml"


def eval_headline(r: dict) -> list[str]:
    """The eval stage's results (results.json) in a few lines: the suite's prompt-level pass rates,
    the paired interval, seen and unseen kinds, the judge."""
    base, aligned = r["baseline"]["ifeval"], r["aligned"]["ifeval"]
    delta = 100 * (aligned["prompt_accuracy"] - base["prompt_accuracy"])
    lines = [
        f"{r.get('suite')} suite, prompt-level pass rate: base {base['prompt_accuracy']:.3f} → aligned "
        f"{aligned['prompt_accuracy']:.3f} ({delta:+.1f} points, {r.get('prompts')} prompts)"
    ]
    paired = (r.get("stats") or {}).get("paired", {}).get("aligned - baseline")
    if paired:
        noise = "within noise" if paired["within_noise"] else "outside noise"
        lines.append(
            f"  95% paired interval [{100 * paired['lo']:+.1f}, {100 * paired['hi']:+.1f}] points, "
            f"p = {paired['p_value']:.3f} ({noise})"
        )
    groups = ((r.get("stats") or {}).get("paired_groups") or {}).get("aligned - baseline", {})
    for group in ("seen", "unseen"):
        b, a = base.get(f"{group}_instruction_accuracy"), aligned.get(f"{group}_instruction_accuracy")
        if a is not None and b is not None:
            d = groups.get(group)
            ci = f", paired [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]" if d else ""
            lines.append(f"  {group} kinds, instruction level: {b:.3f} → {a:.3f} ({100 * (a - b):+.1f} points{ci})")
    kinds = ((r.get("stats") or {}).get("paired_kinds") or {}).get("aligned - baseline")
    if kinds is not None:
        down = kinds_down(r["stats"]).get("aligned - baseline", [])
        listed = [
            f"{k} {100 * kinds[k]['diff']:+.1f} [{100 * kinds[k]['lo']:+.1f}, {100 * kinds[k]['hi']:+.1f}]"
            for k in down
        ]
        lines.append(f"  kinds down beyond noise: {', '.join(listed) or 'none'}")
    if "judge" in r:
        lines.append(f"LLM-judge win rate of aligned vs base: {r['judge']['win_rate']:.3f}")
    return lines


def headline(run_dir: str) -> list[str]:
    summary = read_summary(run_dir) or {}
    lines = [f"pipeline {summary.get('status', '?')} in {summary.get('seconds', 0):.0f} s"]
    r = storage.read_json(storage.join(run_dir, "eval", "results.json"))
    if r:
        lines += eval_headline(r)
        lines.append(f"report: {storage.join(run_dir, 'eval', 'report', 'report.md')}")
    if summary.get("final_model"):
        lines.append(f"serve it:  rayalign serve --model {summary['final_model']}")
    elif summary.get("final_model_withheld"):
        lines.append(f"not promoted: {summary['final_model_withheld']}")
    return lines


def free_cores() -> int:
    """The cores not busy when the run starts: CPU count − the 1-minute load average, at least 1."""
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        busy = 0.0
    return max(1, min(n, round(n - busy)))


def thread_overrides() -> list[str]:
    """One stage runs at a time here, so its models may use every free core, but no more: a torch
    thread without a core of its own makes every step wait for it (a forward pass took 5-15x longer
    with 2 threads than with 1 on a busy 2-core box). $RAYALIGN_TORCH_THREADS, if set, decides."""
    threads = os.environ.setdefault("RAYALIGN_TORCH_THREADS", str(free_cores()))
    return [f"stages.prefer.config.torch_threads={threads}", f"stages.eval.config.torch_threads={threads}"]


def reuse_run(src: str, dst: str, config: str | Path, overrides: list[str]) -> list[str]:
    """Start run folder `dst` (local, absent) as a copy of the finished run `src` that keeps every
    stage whose resolved config under `overrides` is the recorded one (options added since the record
    was written taking their defaults), so a variant re-runs only the
    stage it changes and those after it. A stage's config holds its own output path, which moves with
    the folder, so a plain copy would re-run everything: the copy's records get the paths of `dst`
    and, where the config is otherwise unchanged, the hash the runner computes for it now. Returns the
    kept stage ids (in order; the first changed stage and all later ones run again)."""
    from rayalign.pipeline import records, steps
    from rayalign.pipeline.refs import Entry
    from rayalign.pipeline.runner import State, resolve_step, where_of, with_todays_defaults
    from rayalign.results import Status

    if Path(dst).exists():
        raise FileExistsError(f"{dst} exists: reuse copies a finished run into a new folder")
    shutil.copytree(src, dst)
    moved = re.compile(re.escape(json_str(src.rstrip("/"))) + r'(?=[/"])')
    for f in [*Path(dst).rglob(records.STAGE_RECORD), *Path(dst).rglob("manifest.json")]:
        f.write_text(moved.sub(json_str(dst.rstrip("/")), f.read_text()))
    pipe = load_pipeline(config, [*overrides, f"run_dir={dst}"])
    state, kept = State(pipe), []
    for i, step in enumerate(steps(pipe)):
        r = resolve_step(pipe, step, state.scope(step), where_of(str(config), i, step))
        old = records.read_record(dst, step.id)
        then = with_todays_defaults(old, type(r.cfg)) if old is not None else None
        if old is None or old.status != Status.COMPLETE or then is None or then != r.cfg:
            break
        old.config_hash = r.hash
        records.write_record(dst, step.id, old)
        state.add(step, Entry(old.config, old.result, r.hash))
        kept.append(step.id)
    return kept


def json_str(s: str) -> str:
    """`s` as it appears inside a JSON string."""
    return json.dumps(s)[1:-1]


def main(argv: list[str]) -> int:
    rc = run_pipeline([str(CONFIG), *thread_overrides(), *argv])
    run_dir = load_pipeline(CONFIG, [a for a in argv if "=" in a]).run_dir
    if read_summary(run_dir):
        print("\n".join(["", "== quickstart ==", *headline(run_dir)]))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
