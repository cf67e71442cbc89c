"""The quickstart's quality, measured where it cannot be tuned to: dev split first, held-out once.

    python benchmarks/bench_quickstart.py                       # dev split only (choose recipes here)
    python benchmarks/bench_quickstart.py --heldout             # then the held-out suite, read once
    python benchmarks/bench_quickstart.py --shipped --run-dir runs/qs-shipped --name quickstart-shipped
    python benchmarks/bench_quickstart.py --run-dir runs/old --rescore runs/old-dev2 --name quickstart-old
    python benchmarks/bench_quickstart.py --run-dir runs/q --rescore runs/q-256 --max-tokens 256 --name q-256
    python benchmarks/bench_quickstart.py --run-dir runs/q --set stages.clair.config.length_contrast=true \
        --name quickstart-length-contrast --compare runs/quickstart-dev    # a variant against another run
    python benchmarks/bench_quickstart.py --reuse runs/quickstart-dev --run-dir runs/q2 \
        --set stages.prefer.config.objective.beta=0.2 --name quickstart-beta --compare runs/quickstart-dev

Runs `rayjobs/configs/quickstart.yaml` (the embedded SmolLM2-135M-Instruct: sample → CLAIR → reference
→ APO-zero) with its eval stage scoring base vs aligned on the dev split
(`rayjobs/data/dev_suite.jsonl`: the training prompts' tasks and kinds, worded in a phrasing family
no training prompt uses, so it reads transfer to new wordings) and no promotion gate. A finished run
folder is reused (the pipeline skips finished stages), so the held-out read can follow a dev run
without training again, and `--reuse RUN` starts a new run folder from a finished run's, keeping
the stages whose config the variant leaves unchanged (a plain copy of the folder re-runs every stage:
each stage's config names its own output folder); `--rescore DIR` trains nothing and scores a finished run's model and the
base on the current dev split into DIR/eval (after the dev split changed, say; with `--max-tokens N`
at another answer budget, to see whether a gain holds where fewer answers are cut off). With `--heldout`
the trained model and the base are then scored once on the independent held-out suite
(`suite: heldout`: own phrasings, kinds never trained); the eval stage counts the read in
`$RAYALIGN_CACHE/suite_reads.json` and the report quotes that count. `--shipped` runs the quickstart
as `make quickstart` does (`rayjobs/quickstart.py`: the held-out suite, the gate) in a new run folder
and times the whole invocation, start to end: the number the quickstart's time goal is about.

Writes benchmarks/results/<date>-quickstart-cpu.md: stage times as the run recorded them, each
suite's headline with its 95% paired bootstrap interval, seen/unseen kinds, format leaks and
repetition (the eval stage's own report sections follow). `--name` names a variant's file
(<date>-<name>-cpu.md) so that it does not replace the recipe's; `--compare RUN` adds this run's
aligned model against RUN's aligned model on the same dev prompts (paired interval, per kind, answer
length where the prompt sets none, answers that loop a phrase).
"""

from __future__ import annotations

import argparse
import json
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
    cut = {t: (results.get(t) or {}).get("truncated") for t in ("baseline", "aligned")}
    if None not in cut.values():
        lines.append(
            f"- answers cut off at the token budget: base {cut['baseline']}, aligned {cut['aligned']} "
            f"(of {results.get('prompts')})"
        )
    reads = ((results.get("stats") or {}).get("suite") or {}).get("reads")
    if reads is not None:
        lines.append(f"- times this suite has been scored on this machine (this read included): {reads}")
    lines += ["", "The eval stage's report:", "", *("    " + x if x else "" for x in report_md.splitlines()), ""]
    return lines


def compare_lines(run_dir: str, other: str) -> list[str]:
    """This run's aligned model against `other`'s on the dev split: the paired prompt-level interval,
    the pass rate per kind, and answer length where the prompt sets none."""
    from rayalign import storage
    from rayalign.checks import repeated_phrase
    from rayalign.eval.leaks import answer_lengths
    from rayalign.eval.stats import paired

    def rows(run: str) -> list[dict]:
        text = storage.read_text(storage.join(run, "eval", "responses.jsonl"))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    ours, theirs = rows(run_dir), rows(other)
    if [r["id"] for r in ours] != [r["id"] for r in theirs]:
        return [f"## Against {other}", "", "Not comparable: the two runs answered different prompts.", ""]
    d = paired([all(r["aligned"]["passed"]) for r in ours], [all(r["aligned"]["passed"]) for r in theirs])
    noise = "within noise" if d["within_noise"] else "outside noise"
    same_base = sum(a["baseline"]["response"] == b["baseline"]["response"] for a, b in zip(ours, theirs))
    lines = [
        f"## Dev split: this run's aligned model against `{other}`'s",
        "",
        f"- prompt level, paired over {d['n']} prompts: {100 * d['diff']:+.1f} points, 95% interval "
        f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}], p = {d['p_value']:.3f} ({noise})",
        f"- baseline answers identical in both runs: {same_base} of {len(ours)}",
        "",
        "| kind | n | other run | this run |",
        "|---|---:|---:|---:|",
    ]
    kinds: dict[str, list[tuple[bool, bool]]] = {}
    for a, b in zip(ours, theirs):
        for c, x, y in zip(a["constraints"], a["aligned"]["passed"], b["aligned"]["passed"]):
            kinds.setdefault(c["kind"], []).append((y, x))
    for kind, v in sorted(kinds.items()):
        lines.append(f"| {kind} | {len(v)} | {sum(y for y, _ in v)} | {sum(x for _, x in v)} |")
    lines += [
        "",
        "| answers to prompts setting no length | n | base | other run | this run |",
        "|---|---:|---:|---:|---:|",
    ]
    base = answer_lengths(ours, [r["baseline"]["response"] for r in ours])
    them = answer_lengths(theirs, [r["aligned"]["response"] for r in theirs])
    us = answer_lengths(ours, [r["aligned"]["response"] for r in ours])
    lines.append(f"| median words | {us['n']} | {base['median']:.0f} | {them['median']:.0f} | {us['median']:.0f} |")
    lines.append(
        f"| under 20 words | {us['n']} | {base['short']['count']} | {them['short']['count']} | {us['short']['count']} |"
    )
    loops = [
        sum(repeated_phrase(r[side]["response"]) for r in run)
        for run, side in [(ours, "baseline"), (theirs, "aligned"), (ours, "aligned")]
    ]
    lines.append(f"| repeating a 4-word phrase 4+ times (all prompts) | {len(ours)} | {' | '.join(map(str, loops))} |")
    return [*lines, ""]


def score(run_dir: str, suite: str, out: str, config: Path = CONFIG, max_tokens: int | None = None) -> None:
    """The eval stage as the quickstart configures it (engine, sampling; `max_tokens`, if given, is the
    answer budget instead of the quickstart's), scoring `run_dir`'s trained model and the base on
    `suite` into `out`, with no gate."""
    import yaml

    from rayalign.eval.stage import EvalConfig, run_eval
    from rayalign.pipeline import read_summary

    summary = read_summary(run_dir) or {}
    stages = {s.get("id"): s for s in summary["stages"]}
    spec = yaml.safe_load(config.read_text())
    stage_cfg = next(s for s in spec["stages"] if s["name"] == "eval")["config"]
    cfg = EvalConfig.model_validate(
        {
            **stage_cfg,  # the quickstart's own engine and sampling settings
            "model": summary.get("final_model") or stages["prefer"]["checkpoint"],
            "baseline_model": spec["defaults"]["model"],
            "heldout_pairs": None,  # the run's own eval scored the held-out pairs
            "output": out,
            "suite": suite,
            "gate": None,
            "run_dir": run_dir,
            "torch_threads": int(os.environ["RAYALIGN_TORCH_THREADS"]),
            **({"params": {**stage_cfg["params"], "max_tokens": max_tokens}} if max_tokens else {}),
        }
    )
    run_eval(cfg)


def stage_table(summary: dict) -> list[str]:
    """A run's stage times as its summary recorded them, and their total, as a markdown table."""
    lines = ["| stage | seconds (as recorded when it ran) |", "|---|---:|"]
    total = 0.0
    for s in summary.get("stages", []):
        sec = s.get("seconds") or 0.0
        total += sec
        lines.append(f"| {s.get('id')} | {sec:.0f} |")
    return [*lines, f"| total | {total:.0f} |"]


def shipped(a: argparse.Namespace, t0: float) -> None:
    """`make quickstart`'s own command (`rayjobs/quickstart.py`, the shipped config) into a new run
    folder, timed from start to end; its stage times, held-out headline and gate."""
    import subprocess

    from rayalign import storage
    from rayalign.pipeline import read_summary

    if a.set or a.reuse or a.compare or a.heldout or a.rescore or a.config.resolve() != CONFIG:
        sys.exit(
            "--shipped runs the quickstart as shipped: no --set, --reuse, --compare, --heldout, --rescore or --config"
        )
    if Path(a.run_dir).exists():
        sys.exit(f"{a.run_dir} exists: --shipped times a whole run, from an empty run folder")
    cmd = [sys.executable, str(REPO / "rayjobs" / "quickstart.py"), f"run_dir={a.run_dir}"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    if run.returncode != 0:
        sys.exit(f"the quickstart failed (exit {run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    summary = read_summary(a.run_dir) or {}
    printed = run.stdout.strip().splitlines()
    lines = [
        f"# The quickstart as shipped — {time.strftime('%Y-%m-%d')}",
        "",
        f"`make quickstart`'s command, `python rayjobs/quickstart.py run_dir={a.run_dir}` "
        f"(`{CONFIG.relative_to(REPO)}` unchanged; torch threads per stage: "
        f"{os.environ.get('RAYALIGN_TORCH_THREADS', 'the free cores at the start')}), from an empty run folder.",
        "",
        f"**Whole invocation, start to end: {wall:.0f} s ({wall / 60:.1f} min).**",
        "",
        *stage_table(summary),
        "",
        "Its last lines:",
        "",
    ]
    lines += ["    " + x for x in printed[-12:]] + [""]
    held = storage.read_json(storage.join(a.run_dir, "eval", "results.json"))
    held_md = storage.read_text(storage.join(a.run_dir, "eval", "report", "report.md"))
    lines += suite_lines("Independent held-out suite (the quickstart's own eval stage)", held, held_md)
    save_report(lines, a.name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default=str(REPO / "runs" / "quickstart-dev"), help="the pipeline run folder")
    p.add_argument(
        "--config", type=Path, default=CONFIG, help="the pipeline: the recipe, or a variant with other stages"
    )
    p.add_argument("--heldout", action="store_true", help="after the dev run, score the held-out suite once")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="pipeline overrides: a recipe variant to measure"
    )
    p.add_argument("--name", default="quickstart", help="results file name: <date>-<name>-cpu.md")
    p.add_argument("--compare", metavar="RUN", help="a finished run folder to compare this run's aligned model with")
    p.add_argument(
        "--rescore",
        metavar="DIR",
        help="no training: score --run-dir's trained model and the base on the current dev split into DIR/eval",
    )
    p.add_argument(
        "--reuse",
        metavar="RUN",
        help="start --run-dir (new) as a copy of the finished run RUN: only the stages --set changes and later ones run",
    )
    p.add_argument(
        "--shipped",
        action="store_true",
        help="run `make quickstart`'s command (held-out suite, gate) into a new --run-dir and time it end to end",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="with --rescore: each answer's token budget (default: the quickstart eval's), to see whether "
        "a gain holds when fewer answers are cut off",
    )
    a = p.parse_args()
    config = a.config.resolve()
    if a.max_tokens is not None and not a.rescore:
        p.error("--max-tokens applies to --rescore only (a pipeline run scores with the config's budget)")

    from quickstart import reuse_run, thread_overrides  # rayjobs/quickstart.py

    from rayalign import storage
    from rayalign.pipeline import main as run_pipeline
    from rayalign.pipeline import read_summary

    t0 = time.time()
    if a.shipped:
        shipped(a, t0)
        return
    if a.rescore:
        thread_overrides()
        score(a.run_dir, DEV, storage.join(a.rescore, "eval"), config, a.max_tokens)
        dev = storage.read_json(storage.join(a.rescore, "eval", "results.json"))
        dev_md = storage.read_text(storage.join(a.rescore, "eval", "report", "report.md"))
        lines = [
            f"# Quickstart quality, re-scored — {time.strftime('%Y-%m-%d')}",
            "",
            f"The trained model of `{a.run_dir}` and the base, scored on the dev split `{DEV}` by "
            f"`{config.relative_to(REPO)}`'s eval stage into `{a.rescore}` (nothing trained)"
            + (f", each answer's budget {a.max_tokens} tokens instead of the quickstart's." if a.max_tokens else "."),
            "",
            f"This invocation: {time.time() - t0:.0f} s.",
            "",
            *suite_lines("Dev split (recipes are chosen here)", dev, dev_md),
        ]
        save_report(lines, a.name)
        return
    overrides = [
        f"run_dir={a.run_dir}",
        f"stages.eval.config.suite={DEV}",
        "stages.eval.config.gate=null",
        *a.set,
    ]
    args = [*thread_overrides(), *overrides]
    reused = ""
    if a.reuse:
        kept = reuse_run(a.reuse, a.run_dir, config, args)
        storage.remove_tree(storage.join(a.run_dir, "eval-heldout"))  # RUN's held-out read is not this run's
        reused = f" Stages kept from `{a.reuse}` (their config unchanged): {', '.join(kept) or 'none'}."
    rc = run_pipeline([str(config), *args])
    if rc != 0:
        sys.exit(f"the quickstart pipeline failed (exit {rc}); see {a.run_dir}")
    summary = read_summary(a.run_dir) or {}
    lines = [
        f"# Quickstart quality — {time.strftime('%Y-%m-%d')}",
        "",
        f"`{config.relative_to(REPO)}` with `{' '.join(overrides[1:])}`; run folder `{a.run_dir}`.{reused}",
        "",
        *stage_table(summary),
        "",
        f"This invocation: {time.time() - t0:.0f} s.",
        "",
    ]
    dev = storage.read_json(storage.join(a.run_dir, "eval", "results.json"))
    dev_md = storage.read_text(storage.join(a.run_dir, "eval", "report", "report.md"))
    lines += suite_lines("Dev split (recipes are chosen here)", dev, dev_md)
    if a.compare:
        lines += compare_lines(a.run_dir, a.compare)

    if a.heldout:
        out = storage.join(a.run_dir, "eval-heldout")
        t1 = time.time()
        score(a.run_dir, "heldout", out, config)
        held = storage.read_json(storage.join(out, "results.json"))
        held_md = storage.read_text(storage.join(out, "report", "report.md"))
        lines += [f"Held-out eval: {time.time() - t1:.0f} s.", ""]
        lines += suite_lines("Independent held-out suite (read once, after the dev run)", held, held_md)
    save_report(lines, a.name)


if __name__ == "__main__":
    main()
