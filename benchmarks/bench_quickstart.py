"""The quickstart's quality, measured where it cannot be tuned to: dev split first, held-out once.

    python benchmarks/bench_quickstart.py                       # dev split only (choose recipes here)
    python benchmarks/bench_quickstart.py --heldout             # then the held-out suite, read once
    python benchmarks/bench_quickstart.py --run-dir runs/q --set stages.clair.config.length_contrast=true

Runs `rayjobs/configs/quickstart.yaml` (the embedded SmolLM2-135M-Instruct: sample → CLAIR → reference
→ APO-zero) with its eval stage scoring base vs aligned on the dev split
(`rayjobs/data/dev_suite.jsonl`, prompts of the training prompts' make that nothing trains on) and
no promotion gate. A finished run folder is reused (the pipeline skips finished stages), so the
held-out read can follow a dev run without training again. With `--heldout` the trained model and
the base are then scored once on the independent held-out suite (`suite: heldout`: own phrasings,
kinds never trained); the eval stage counts the read in `$RAYALIGN_CACHE/suite_reads.json` and the
report quotes that count.

Writes benchmarks/results/<date>-quickstart-cpu.md: stage times as the run recorded them, each
suite's headline with its 95% paired bootstrap interval, seen/unseen kinds, format leaks and
repetition (the eval stage's own report sections follow).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "rayjobs"))
CONFIG = REPO / "rayjobs" / "configs" / "quickstart.yaml"
DEV = "rayjobs/data/dev_suite.jsonl"


def suite_lines(title: str, results: dict, report_md: str) -> list[str]:
    from quickstart import eval_headline  # rayjobs/quickstart.py: the headline `make quickstart` prints

    lines = [f"## {title}", "", *(f"- {line.strip()}" for line in eval_headline(results))]
    reads = ((results.get("stats") or {}).get("suite") or {}).get("reads")
    if reads is not None:
        lines.append(f"- times this suite has been scored on this machine (this read included): {reads}")
    lines += ["", "The eval stage's report:", "", *("    " + x if x else "" for x in report_md.splitlines()), ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default=str(REPO / "runs" / "quickstart-dev"), help="the pipeline run folder")
    p.add_argument("--heldout", action="store_true", help="after the dev run, score the held-out suite once")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="pipeline overrides: a recipe variant to measure"
    )
    a = p.parse_args()

    from quickstart import thread_overrides  # rayjobs/quickstart.py: torch threads = the free cores

    from rayalign import storage
    from rayalign.eval.stage import EvalConfig, run_eval
    from rayalign.pipeline import main as run_pipeline
    from rayalign.pipeline import read_summary

    t0 = time.time()
    overrides = [
        f"run_dir={a.run_dir}",
        f"stages.eval.config.suite={DEV}",
        "stages.eval.config.gate=null",
        *a.set,
    ]
    rc = run_pipeline([str(CONFIG), *thread_overrides(), *overrides])
    if rc != 0:
        sys.exit(f"the quickstart pipeline failed (exit {rc}); see {a.run_dir}")
    summary = read_summary(a.run_dir) or {}
    lines = [
        f"# Quickstart quality — {time.strftime('%Y-%m-%d')}",
        "",
        f"`{CONFIG.relative_to(REPO)}` with `{' '.join(overrides[1:])}`; run folder `{a.run_dir}`.",
        "",
        "| stage | seconds (as recorded when it ran) |",
        "|---|---:|",
    ]
    total = 0.0
    for s in summary.get("stages", []):
        sec = s.get("seconds") or 0.0
        total += sec
        lines.append(f"| {s.get('id')} | {sec:.0f} |")
    lines += [f"| total | {total:.0f} |", "", f"This invocation: {time.time() - t0:.0f} s.", ""]
    dev = storage.read_json(storage.join(a.run_dir, "eval", "results.json"))
    dev_md = storage.read_text(storage.join(a.run_dir, "eval", "report", "report.md"))
    lines += suite_lines("Dev split (recipes are chosen here)", dev, dev_md)

    if a.heldout:
        import yaml

        stages = {s.get("id"): s for s in summary["stages"]}
        spec = yaml.safe_load(CONFIG.read_text())
        stage_cfg = next(s for s in spec["stages"] if s["name"] == "eval")["config"]
        out = storage.join(a.run_dir, "eval-heldout")
        cfg = EvalConfig.model_validate(
            {
                **stage_cfg,  # the quickstart's own engine and sampling settings
                "model": stages["prefer"]["checkpoint"],
                "baseline_model": spec["defaults"]["model"],
                "heldout_pairs": None,  # the dev run's eval already scored the held-out pairs
                "output": out,
                "suite": "heldout",
                "gate": None,
                "run_dir": a.run_dir,
                "torch_threads": int(os.environ["RAYALIGN_TORCH_THREADS"]),
            }
        )
        t1 = time.time()
        run_eval(cfg)
        held = storage.read_json(storage.join(out, "results.json"))
        held_md = storage.read_text(storage.join(out, "report", "report.md"))
        lines += [f"Held-out eval: {time.time() - t1:.0f} s.", ""]
        lines += suite_lines("Independent held-out suite (read once, after the dev run)", held, held_md)
    save_report(lines, "quickstart")


if __name__ == "__main__":
    main()
