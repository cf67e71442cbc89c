"""A recipe variant against the recipe over several training seeds, on the dev split, by a fixed rule.

    python benchmarks/compare_seeds.py --name beta005-vs-recipe-seeds345 \
        --pair runs/qs-seed3 runs/qs-b005-s3 --pair runs/qs-seed4 runs/qs-b005-s4 \
        --pair runs/qs-seed5 runs/qs-b005-s5

Each `--pair RECIPE VARIANT` names two finished `bench_quickstart.py` run folders trained from the
same sample seed (the variant reusing the recipe's earlier stages), both scored on the same dev
prompts. One training run cannot choose a recipe: the quickstart recipe's own dev gain moves about
10 points with the sample seed. So this script pools the seeds: each dev prompt's outcome is
averaged over the seeds, and the paired bootstrap resamples prompts (the same prompt is hard or easy
in every seed, so prompts, not prompt-seed rows, are the independent unit).

The rule, fixed before the runs it judges were read, by the variant's goal (`--goal`). The variant
replaces the recipe when all hold (three for `loops`, four for `length`):

1. pass rate (prompt level) not worse: variant − recipe ≥ −`--margin` points (default 3.3, two
   prompts of 60) and the 95% interval's upper bound ≥ 0;
2. the goal met beyond noise:
   - `loops` (default): less looping: answers repeating a 4-word phrase 4+ times, variant − recipe,
     has its 95% interval's upper bound below 0;
   - `length`: longer answers: on prompts that set no length, words per answer, variant − recipe,
     has its 95% interval's lower bound above 0 (the recipe's answers are shorter than the base's,
     and it fails requests for a minimum length);
3. the other measure no worse:
   - `loops`: no length collapse: on prompts that set no length, the share of answers under 20 words
     is at most 5 points above the recipe's (short answers cannot loop, so fewer loops alone can mean
     this);
   - `length`: no more looping: the looping difference's 95% interval's lower bound is at most 0
     (longer answers have more room to loop);
4. `length` only: no format leaks: in every seed, the variant's answers add a format the prompt did
   not ask for (quotes, a JSON wrapper, a P.S., a title) no more often than the base's (a variant
   that lengthens answers by dropping contrast pairs brings the quote leak back).

Writes benchmarks/results/<date>-<name>-cpu.md: per seed, both models' gains over the base, the
paired difference, looping and length; pooled, the three measures with intervals and the verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
SHORT_MARGIN = 0.05  # rule 3: the share of short answers may rise this much at most


def responses(run: str) -> list[dict]:
    """The eval stage's per-prompt rows of a finished run folder's dev scoring."""
    from rayalign import storage

    path = storage.join(run, "eval", "responses.jsonl")
    if not storage.exists(path):
        sys.exit(f"{run}: no {path}; is it a finished bench_quickstart.py run folder?")
    return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def measures(rows: list[dict], side: str) -> dict[str, list[float]]:
    """Per prompt: adds an unasked format, passed every constraint, loops a phrase, and (prompts setting
    no length) is short and how many words it has."""
    from rayalign.checks import WORD, repeated_phrase
    from rayalign.eval.leaks import LEAKS, LENGTH_KINDS, SHORT_WORDS

    asked = [{c["kind"] for c in r["constraints"]} for r in rows]
    free = [not kinds & LENGTH_KINDS for kinds in asked]
    return {
        # adds a format (quotes, JSON, P.S., title) the prompt did not ask for
        "leak": [
            float(any(detect(r[side]["response"]) for detect, kinds in LEAKS.values() if not kinds & k))
            for r, k in zip(rows, asked)
        ],
        "pass": [float(all(r[side]["passed"])) for r in rows],
        "loop": [float(repeated_phrase(r[side]["response"])) for r in rows],
        "short": [float(len(WORD.findall(r[side]["response"])) < SHORT_WORDS) for r, f in zip(rows, free) if f],
        "words": [float(len(WORD.findall(r[side]["response"]))) for r, f in zip(rows, free) if f],
    }


def pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def interval(d: dict) -> str:
    return f"{pts(d['diff'])} [{pts(d['lo'])}, {pts(d['hi'])}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("RECIPE", "VARIANT"))
    p.add_argument("--name", required=True, help="results file name: <date>-<name>-cpu.md")
    p.add_argument("--margin", type=float, default=3.3, help="rule 1: points the pass rate may fall at most")
    p.add_argument(
        "--goal", choices=("loops", "length"), default="loops", help="rules 2 and 3: what the variant is for"
    )
    a = p.parse_args()

    from rayalign.eval.stats import paired

    seeds, ids = [], None
    for recipe, variant in a.pair:
        r, v = responses(recipe), responses(variant)
        if [x["id"] for x in r] != [x["id"] for x in v]:
            sys.exit(f"{recipe} and {variant} answered different prompts: not a pair")
        if ids is not None and [x["id"] for x in r] != ids:
            sys.exit("the pairs were scored on different dev prompts: every pair must answer the same split")
        ids = [x["id"] for x in r]
        same_base = sum(x["baseline"]["response"] == y["baseline"]["response"] for x, y in zip(r, v))
        seeds.append(
            {
                "recipe": recipe,
                "variant": variant,
                "base": measures(r, "baseline"),
                "r": measures(r, "aligned"),
                "v": measures(v, "aligned"),
                "same_base": same_base,
                "n": len(r),
            }
        )

    lines = [
        "# A recipe variant against the recipe over training seeds (dev split)",
        "",
        "Points are prompt-level pass-rate points; looping is answers repeating a 4-word phrase 4+ times;",
        "short is answers under 20 words among prompts that set no length. Intervals: 95% paired bootstrap",
        "over prompts.",
        "",
        "| recipe run | variant run | base → recipe | base → variant | variant − recipe | looping base / recipe / variant"
        " | short base / recipe / variant | median words base / recipe / variant | base answers identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in seeds:
        b, r, v = s["base"], s["r"], s["v"]
        lines.append(
            f"| `{s['recipe']}` | `{s['variant']}` | {interval(paired(r['pass'], b['pass']))} "
            f"| {interval(paired(v['pass'], b['pass']))} | {interval(paired(v['pass'], r['pass']))} "
            f"| {sum(b['loop']):.0f} / {sum(r['loop']):.0f} / {sum(v['loop']):.0f} of {s['n']} "
            f"| {sum(b['short']):.0f} / {sum(r['short']):.0f} / {sum(v['short']):.0f} of {len(b['short'])} "
            f"| {statistics.median(b['words']):.0f} / {statistics.median(r['words']):.0f} / "
            f"{statistics.median(v['words']):.0f} | {s['same_base']} of {s['n']} |"
        )

    def pooled(model: str, key: str) -> list[float]:  # per prompt, the mean over seeds
        return [statistics.fmean(col) for col in zip(*(s[model][key] for s in seeds))]

    d_pass = paired(pooled("v", "pass"), pooled("r", "pass"))
    d_loop = paired(pooled("v", "loop"), pooled("r", "loop"))
    d_short = paired(pooled("v", "short"), pooled("r", "short"))
    d_words = paired(pooled("v", "words"), pooled("r", "words"))
    rule_pass = (
        f"pass rate not worse: variant − recipe ≥ −{a.margin:.1f} points and upper bound ≥ 0",
        interval(d_pass),
        100 * d_pass["diff"] >= -a.margin and d_pass["hi"] >= 0,
    )
    words = f"{d_words['diff']:+.1f} [{d_words['lo']:+.1f}, {d_words['hi']:+.1f}] words"
    if a.goal == "loops":
        rules = [
            rule_pass,
            ("less looping: variant − recipe upper bound < 0", interval(d_loop), d_loop["hi"] < 0),
            (
                f"no length collapse: short answers variant − recipe ≤ +{100 * SHORT_MARGIN:.0f} points",
                interval(d_short),
                d_short["diff"] <= SHORT_MARGIN,
            ),
        ]
    else:
        rules = [
            rule_pass,
            ("longer answers (prompts setting no length): variant − recipe lower bound > 0", words, d_words["lo"] > 0),
            ("no more looping: variant − recipe lower bound ≤ 0", interval(d_loop), d_loop["lo"] <= 0),
            (
                "no format leaks: the variant adds an unasked format no more often than the base, in every seed",
                " / ".join(f"{sum(s['v']['leak']):.0f} vs {sum(s['base']['leak']):.0f}" for s in seeds),
                all(sum(s["v"]["leak"]) <= sum(s["base"]["leak"]) for s in seeds),
            ),
        ]
    lines += [
        "",
        f"## Pooled over {len(seeds)} seeds ({seeds[0]['n']} prompts, each averaged over the seeds)",
        "",
        f"The variant's goal (`--goal`): {a.goal}. Words per answer on prompts setting no length, variant − "
        f"recipe: {words}; looping {interval(d_loop)}; short answers {interval(d_short)}.",
        "",
        "| rule | variant − recipe | met |",
        "|---|---:|---|",
        *(f"| {rule} | {value} | {'yes' if ok else '**no**'} |" for rule, value, ok in rules),
        "",
        f"Base → recipe {interval(paired(pooled('r', 'pass'), pooled('base', 'pass')))}, "
        f"base → variant {interval(paired(pooled('v', 'pass'), pooled('base', 'pass')))}.",
        "",
        "**Verdict: the variant replaces the recipe.**"
        if all(ok for _, _, ok in rules)
        else "**Verdict: the recipe stays** (a rule above is not met).",
        "",
    ]
    save_report(lines, a.name)


if __name__ == "__main__":
    main()
