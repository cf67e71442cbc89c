"""Statistics of the eval stage: bootstrap intervals, paired differences, the promotion gate.

- `rate`: a pass rate with its 95% percentile-bootstrap interval (resampling the items with
  replacement, `N_BOOT` times, a seeded generator: the same inputs give the same interval).
- `paired`: model A minus model B on the same prompts: the mean of the per-prompt differences, its
  95% bootstrap interval (the prompts resampled, both models' answers kept together) and a
  two-sided bootstrap p-value — the share of resampled differences at least as far from the
  observed one as the observed one is from 0 (the bootstrap distribution shifted to the null),
  (count + 1) / (N_BOOT + 1). A difference is "within noise" when its interval covers 0.
- `paired_ratio`: `paired` for a pooled rate (a prompt's constraints of some kinds are its units;
  prompts are resampled).
- `eval_stats`: the `results["stats"]` block of the eval stage (prompt level, instruction level —
  the prompts resampled with their constraints — and per kind, with n; paired for every model
  against the baseline: prompt level, per kind — a kind "down beyond noise" when its interval lies
  below 0 — and the seen and unseen kinds).
- `gate`: does the paired lower bound clear `min_lower_bound`? (a pipeline promotes `final_model`
  only when it does).
- `record_read`: how many times a suite has been scored, counted in `$RAYALIGN_CACHE/suite_reads.json`
  (a held-out suite read often has been tuned to).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Literal

import numpy as np

from rayalign import storage
from rayalign.checks import kind_groups
from rayalign.config import Cfg
from rayalign.eval.leaks import leaks_md, samples_md
from rayalign.eval.lmeval import lmeval_md

N_BOOT = 2000
SEED = 0
LEVEL = 0.95


def _interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _resample(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def rate(values: list[float] | list[bool], n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """{mean, lo, hi, n} of 0/1 (or any numeric) values; an empty list gives mean 0 and a [0, 1] interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": 0.0, "lo": 0.0, "hi": 1.0, "n": 0}
    lo, hi = _interval(x[_resample(x.size, n_boot, seed)].mean(axis=1))
    return {"mean": float(x.mean()), "lo": lo, "hi": hi, "n": int(x.size)}


def ratio_rate(passed: list[int], total: list[int], n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """Pooled rate sum(passed) / sum(total) with the groups (prompts) resampled whole; n = sum(total)."""
    k, m = np.asarray(passed, dtype=np.float64), np.asarray(total, dtype=np.float64)
    if m.sum() == 0:
        return {"mean": 0.0, "lo": 0.0, "hi": 1.0, "n": 0}
    idx = _resample(m.size, n_boot, seed)
    lo, hi = _interval(k[idx].sum(axis=1) / np.maximum(m[idx].sum(axis=1), 1))
    return {"mean": float(k.sum() / m.sum()), "lo": lo, "hi": hi, "n": int(m.sum())}


def paired(a: list[float] | list[bool], b: list[float] | list[bool], n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """{diff, lo, hi, p_value, n, within_noise} of mean(a - b), a and b scored on the same items."""
    return paired_ratio(a, b, [1] * len(a), n_boot, seed)


def paired_ratio(
    a: list[float] | list[bool] | list[int],
    b: list[float] | list[bool] | list[int],
    m: list[int],
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> dict:
    """`paired` for pooled rates: item i holds m[i] units (a prompt's constraints of some kinds), of
    which a[i] and b[i] passed for the two models; the difference is Σ(a − b) / Σm, and the items
    (prompts) are resampled, so units of one prompt stay together."""
    if len(a) != len(b):
        raise ValueError(f"paired statistics need the same items: {len(a)} vs {len(b)} scores")
    if len(m) != len(a):
        raise ValueError(f"paired_ratio needs a size per item: {len(m)} sizes for {len(a)} items")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    units = np.asarray(m, dtype=np.float64)
    if d.size == 0 or units.sum() == 0:
        return {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p_value": 1.0, "n": 0, "within_noise": True}
    idx = _resample(d.size, n_boot, seed)
    boots = d[idx].sum(axis=1) / np.maximum(units[idx].sum(axis=1), 1)
    diff = float(d.sum() / units.sum())
    lo, hi = _interval(boots)
    extreme = int(np.sum(np.abs(boots - diff) >= abs(diff) - 1e-12))
    p = (extreme + 1) / (n_boot + 1)
    return {"diff": diff, "lo": lo, "hi": hi, "p_value": min(1.0, p), "n": int(d.size), "within_noise": lo <= 0 <= hi}


def model_rates(suite: list[dict], passes: list[list[bool]], n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """The `stats.rates[label]` entry of one model: prompt level, instruction level, per kind."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(suite, passes):
        for c, v in zip(row["constraints"], ok):
            by_kind[c["kind"]].append(v)
    return {
        "prompt_level": rate([all(ok) for ok in passes], n_boot, seed),
        "instruction_level": ratio_rate([sum(ok) for ok in passes], [len(ok) for ok in passes], n_boot, seed),
        "kinds": {k: rate(v, n_boot, seed) for k, v in sorted(by_kind.items())},
    }


def paired_kinds(
    suite: list[dict], a: list[list[bool]], b: list[list[bool]], kinds: set[str], n_boot: int = N_BOOT, seed: int = SEED
) -> dict:
    """`paired_ratio` of the constraints whose kind is in `kinds`: per prompt that has any, how many
    model A and model B passed and how many there are (instruction level, prompts resampled)."""
    rows = []
    for row, pa, pb in zip(suite, a, b):
        mine = [i for i, c in enumerate(row["constraints"]) if c["kind"] in kinds]
        if mine:
            rows.append((sum(pa[i] for i in mine), sum(pb[i] for i in mine), len(mine)))
    if not rows:
        return paired_ratio([], [], [], n_boot, seed)
    ka, kb, m = zip(*rows)
    return paired_ratio(list(ka), list(kb), list(m), n_boot, seed)


def eval_stats(
    suite: list[dict],
    passes: dict[str, list[list[bool]]],
    base: str | None,
    suite_info: dict,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> dict:
    """`results["stats"]`: rates per model label; each model minus `base` at prompt level (`paired`),
    per kind (`paired_kinds`: a kind "down beyond noise" has its interval below 0) and for the seen
    and unseen kinds (`paired_groups`, instruction level); the suite read."""
    out: dict = {
        "rates": {tag: model_rates(suite, p, n_boot, seed) for tag, p in passes.items()},
        "paired": {},
        "paired_kinds": {},
        "paired_groups": {},
    }
    if base is not None and base in passes:
        present = {c["kind"] for row in suite for c in row["constraints"]}
        groups = kind_groups(present)
        for tag, p in passes.items():
            if tag == base:
                continue
            name = f"{tag} - {base}"
            diff = paired([all(ok) for ok in p], [all(ok) for ok in passes[base]], n_boot, seed)
            out["paired"][name] = {"metric": "prompt_level", **diff}
            out["paired_kinds"][name] = {
                k: paired_kinds(suite, p, passes[base], {k}, n_boot, seed) for k in sorted(present)
            }
            out["paired_groups"][name] = {
                g: paired_kinds(suite, p, passes[base], set(kinds), n_boot, seed)
                for g, kinds in groups.items()
                if kinds
            }
    out["suite"] = suite_info
    return out


def kinds_down(stats: dict) -> dict[str, list[str]]:
    """{comparison: the kinds whose paired interval lies below 0}, for comparisons that have any."""
    out = {}
    for name, kinds in (stats.get("paired_kinds") or {}).items():
        down = [k for k, d in kinds.items() if d["n"] and d["hi"] < 0]
        if down:
            out[name] = down
    return out


class GateConfig(Cfg):
    """Promote the trained model only when (model − baseline) on `metric` has a 95% lower bound above
    `min_lower_bound` (0.0: the gain is not within noise)."""

    metric: Literal["prompt_level", "instruction_level"] = "prompt_level"  # the pass rate the gate compares
    min_lower_bound: float = 0.0  # the paired difference's 95% lower bound must be above this


def gate(cfg: GateConfig, suite: list[dict], passes: dict[str, list[list[bool]]], model: str, base: str | None) -> dict:
    """{passed, metric, diff, lower_bound, min_lower_bound, reason}; no baseline → not passed, said why."""
    if base is None or base not in passes:
        return {
            "passed": False,
            "metric": cfg.metric,
            "min_lower_bound": cfg.min_lower_bound,
            "reason": "the gate compares against baseline_model, and none is configured",
        }
    if cfg.metric == "prompt_level":
        a, b = ([float(all(ok)) for ok in passes[t]] for t in (model, base))
    else:  # per-prompt share of constraints passed: the paired unit stays the prompt
        a, b = ([sum(ok) / max(len(ok), 1) for ok in passes[t]] for t in (model, base))
    d = paired(a, b)
    ok = d["lo"] > cfg.min_lower_bound
    word = "above" if ok else "not above"
    return {
        "passed": ok,
        "metric": cfg.metric,
        "diff": d["diff"],
        "lower_bound": d["lo"],
        "min_lower_bound": cfg.min_lower_bound,
        "reason": (
            f"{model} - {base} {cfg.metric}: {d['diff']:+.3f}, 95% lower bound {d['lo']:+.3f} is {word} "
            f"{cfg.min_lower_bound:+.3f}"
        ),
    }


def suite_digest(suite: list[dict]) -> str:
    text = "".join(json.dumps(r, sort_keys=True) for r in suite)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_read(name: str, suite: list[dict]) -> int:
    """Count one more scoring of this suite (its name and content digest); returns the total so far."""
    ledger = storage.cache_root() / "suite_reads.json"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    try:
        counts = json.loads(ledger.read_text())
    except (OSError, ValueError):
        counts = {}
    key = f"{name}@{suite_digest(suite)}"
    counts[key] = int(counts.get(key, 0)) + 1
    tmp = ledger.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts, indent=1, sort_keys=True))
    tmp.replace(ledger)
    return counts[key]


def stats_md(stats: dict) -> list[str]:
    """report.md lines: rates with intervals, paired differences (within noise or not), per kind."""
    lines = ["## Statistics (95% bootstrap intervals)", ""]
    s = stats.get("suite") or {}
    if s:
        lines += [f"Suite `{s.get('name')}` ({s.get('path')}), scored {s.get('reads')} time(s) so far.", ""]
    # the compared-against model (baseline) first, as in the report's other tables
    against = {name.split(" - ", 1)[1] for name in stats.get("paired", {})}
    tags = sorted(stats["rates"], key=lambda t: t not in against)
    lines += ["| model | prompt level | instruction level |", "|---|---|---|"]
    for tag in tags:
        r = stats["rates"][tag]
        p, i = r["prompt_level"], r["instruction_level"]
        lines.append(f"| {tag} | {_ci(p)} (n {p['n']}) | {_ci(i)} (n {i['n']}) |")
    for name, d in stats.get("paired", {}).items():
        verdict = "within noise" if d["within_noise"] else "outside noise"
        lines += [
            "",
            f"**{name}** ({d['metric']}, paired over {d['n']} prompts): {d['diff']:+.3f} "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}], p = {d['p_value']:.4f} — {verdict}",
        ]
    for name, groups in (stats.get("paired_groups") or {}).items():
        for g, d in groups.items():
            verdict = "within noise" if d["within_noise"] else "outside noise"
            lines += [
                "",
                f"**{name}**, {g} kinds (instruction level, paired over {d['n']} prompts): {d['diff']:+.3f} "
                f"[{d['lo']:+.3f}, {d['hi']:+.3f}] — {verdict}",
            ]
    per_kind = stats.get("paired_kinds") or {}
    down = kinds_down(stats)
    for name in per_kind:
        listed = ", ".join(down.get(name, [])) or "none"
        lines += ["", f"Kinds down beyond noise ({name}: the paired interval below 0): {listed}."]
    kinds = sorted({k for r in stats["rates"].values() for k in r["kinds"]})
    lines += [
        "",
        "| kind | n | " + " | ".join([*tags, *(f"{name} (paired)" for name in per_kind)]) + " |",
        "|---|---:|" + "---|" * (len(tags) + len(per_kind)),
    ]
    for k in kinds:
        cells = [_ci(stats["rates"][t]["kinds"][k]) if k in stats["rates"][t]["kinds"] else "" for t in tags]
        for name, by_kind in per_kind.items():
            d = by_kind.get(k)
            mark = " **down**" if k in down.get(name, []) else ""
            cells.append(f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}" if d else "")
        n = next(stats["rates"][t]["kinds"][k]["n"] for t in tags if k in stats["rates"][t]["kinds"])
        lines.append(f"| {k} | {n} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def gate_md(g: dict) -> list[str]:
    return ["## Promotion gate", "", f"**{'PASSED' if g['passed'] else 'FAILED'}**: {g['reason']}", ""]


def kinds_md(results: dict, tags: list[str]) -> list[str]:
    """Seen kinds (trained) and unseen kinds (`checks.HELDOUT_KINDS`), listed and scored apart."""
    ife = {t: results[t]["ifeval"] for t in tags}
    first: dict = next(iter(ife.values()), {})
    if "seen_kinds" not in first:
        return []
    md = ["## Seen and unseen kinds", ""]
    for group in ("seen", "unseen"):
        kinds = first[f"{group}_kinds"]
        scores = ", ".join(f"{t} {_fmt(ife[t][f'{group}_instruction_accuracy'])}" for t in tags)
        md.append(f"- {group} kinds ({len(kinds)}): {', '.join(kinds) or 'none'} — instruction level: {scores}")
    return [*md, ""]


def report_sections(results: dict) -> list[str]:
    """The report.md sections of the eval's quality measures: seen/unseen kinds, statistics, the gate,
    format leaks and repetition, lm-eval results, sample answers side by side."""
    tags = [t for t in ("baseline", "aligned") if t in results]
    md = kinds_md(results, tags)
    if results.get("stats"):
        md += stats_md(results["stats"])
    if results.get("gate"):
        md += gate_md(results["gate"])
    md += leaks_md(results, tags) + lmeval_md(results, tags)
    md += samples_md(results.get("samples") or [], tags)
    pairs = results.get("clair_pairs") or []
    return md + samples_md(pairs, ["rejected", "chosen", "status"], title="CLAIR pairs: original → revision")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ci(r: dict) -> str:
    return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
