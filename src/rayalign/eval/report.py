"""The report folder: `report.md` (tables) and PNG plots (matplotlib, Agg backend: no display needed),
and `report.html` (one self-contained page with the answers side by side: `rayalign.eval.report_html`).

Plots: pass rate by constraint kind (baseline vs aligned), the training curve of every training
stage (from its `metrics.jsonl`: one JSON object per step with `step`, `loss`, `lr`, ...), and the
reward margins over steps of preference stages (metrics keys containing "margin" or starting
with "rewards": chosen / rejected implicit rewards), and for policy-gradient stages (GRPO: rows with
`reward_mean`, `pass_rate`, `kl`, ...) reward / pass rate (and each `reward/<name>`), KL and clip
fraction, response length, and rollout / training tokens/s. A pipeline with rounds (`repeat`) gets a table
with one row per round: the eval metrics of that round's eval stage (if it has one) and the last
loss of its training stages.

The folder and `run_dir` may be object-storage URIs: the report is drawn in a local temporary
folder and uploaded (report.md last, so a report.md that exists has its plots).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from rayalign import storage
from rayalign.eval.stats import report_sections
from rayalign.results import summary_warnings
from rayalign.textfmt import number

ROUND = re.compile(r"^round-(\d+)/")


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    for line in storage.read_text(path).splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a killed run
    return rows


def _relative(root: str, path: str) -> str:
    return path[len(root.rstrip("/")) :].strip("/").replace("\\", "/")


def training_logs(run_dir: str | Path | None) -> dict[str, list[dict]]:
    """Stage folder (relative to run_dir, e.g. `sft`, `round-2/prefer`) → its per-step metrics rows,
    for every `metrics.jsonl` one or two levels down."""
    if not run_dir or not storage.is_dir(run_dir):
        return {}
    root = str(run_dir)
    logs = {}
    for p in storage.list_dir(root, recursive=True):
        rel = _relative(root, p)
        if storage.basename(rel) != "metrics.jsonl" or not 2 <= len(rel.split("/")) <= 3:
            continue
        rows = [r for r in read_jsonl(p) if "step" in r]
        if rows:
            logs[rel.rsplit("/", 1)[0]] = rows
    return dict(sorted(logs.items()))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], keys: list[str], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, marker="." if len(pts) < 30 else None)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_by_kind(results: dict, path: Path) -> Path:
    plt = _plt()
    tags = [t for t in ("baseline", "aligned") if t in results]
    kinds = sorted(results["aligned"]["ifeval"]["by_kind"])
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(kinds)), 3.8))
    width = 0.8 / len(tags)
    for j, tag in enumerate(tags):
        vals = [results[tag]["ifeval"]["by_kind"].get(k, 0.0) for k in kinds]
        ax.bar([i + j * width for i in range(len(kinds))], vals, width, label=f"{tag}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))])
    ax.set_xticklabels(kinds, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pass rate")
    ax.set_title("instruction following: pass rate by constraint kind")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _f(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _seconds(v) -> str:
    return "" if v is None else f"{v:.1f}"


def _stage_table(summary: dict | None) -> list[str]:
    if not summary:
        return []
    lines = [
        "## Pipeline stages",
        "",
        "| stage | kind | status | seconds | rows in / ok / out | key metrics |",
        "|---|---|---|---:|---|---|",
    ]
    for s in summary.get("stages", []):
        c = s.get("counts") or {}
        rows = f"{c.get('in')} / {c.get('ok')} / {c.get('out_rows')}" if c else ""
        metrics = ", ".join(f"{k} {number(v)}" for k, v in list((s.get("metrics") or {}).items())[:5])
        lines.append(
            f"| {s.get('id') or s['name']} | {s['stage']} | {s['status']}"
            f"{' (skipped)' if s.get('skipped') else ''} | {_seconds(s.get('seconds'))} | {rows} | {metrics} |"
        )
    warnings = [f"- {sid}: {w}" for sid, w in summary_warnings(summary)]
    return [*lines, "", *(["### Warnings", "", *warnings, ""] if warnings else [])]


ROUND_METRICS = (
    "aligned/prompt_accuracy",
    "aligned/instruction_accuracy",
    "aligned/heldout_accuracy",
    "aligned/reward",
    "judge/win_rate",
)


def round_of(run_dir: str | Path | None, folder: str | Path) -> int | None:
    """The round a folder under run_dir belongs to (`<run_dir>/round-2/eval/report` → 2), else None."""
    if not run_dir or not str(folder).startswith(str(run_dir).rstrip("/")):
        return None
    m = ROUND.match(_relative(str(run_dir), str(folder)) + "/")
    return int(m.group(1)) if m else None


def round_rows(
    summary: dict | None, logs: dict[str, list[dict]], current: tuple[int, dict[str, float]] | None = None
) -> dict[int, dict[str, float]]:
    """Round → its numbers: eval metrics of the round's eval stages (`current`: the eval being
    written now, not in the summary yet), and the last loss of the round's training stages."""
    rounds: dict[int, dict[str, float]] = {}
    evals = [
        (int(s["round"]), s.get("metrics") or {})
        for s in (summary or {}).get("stages", [])
        if s.get("round") and s.get("stage") == "eval"
    ]
    for r, metrics in evals + ([current] if current else []):
        rounds.setdefault(r, {}).update({k: v for k, v in metrics.items() if k in ROUND_METRICS})
    for folder, rows in logs.items():
        m = ROUND.match(folder + "/")
        if m and isinstance(rows[-1].get("loss"), (int, float)):
            rounds.setdefault(int(m.group(1)), {})[f"{folder.split('/', 1)[1]}/loss"] = rows[-1]["loss"]
    return dict(sorted(rounds.items()))


def _rounds_table(rounds: dict[int, dict[str, float]]) -> list[str]:
    if not rounds:
        return []
    present = {k for row in rounds.values() for k in row}
    keys = [k for k in ROUND_METRICS if k in present] + sorted(present - set(ROUND_METRICS))
    lines = ["## After every round", "", "| round | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for r, row in rounds.items():
        lines.append(f"| {r} | " + " | ".join(_f(row.get(k)) for k in keys) + " |")
    return [*lines, ""]


def write_report(
    folder: str | Path,
    results: dict,
    run_dir: str | Path | None = None,
    responses: str | None = None,
    pairs: str | None = None,
) -> str:
    """Write `<folder>/report.md`, `<folder>/plots/*.png` and `<folder>/report.html`; returns the
    report.md path.

    `responses`: the eval's `responses.jsonl` (default: the one beside `folder`, where the eval
    stage writes it). `pairs`: a pairs dataset folder to show sample training pairs from (default:
    the output of the run's last `clair` or `judge` stage, when `run_dir` has a summary).
    """
    r = round_of(run_dir, folder)
    current = (r, results.get("metrics") or {}) if r else None
    summary = storage.read_json(storage.join(run_dir, "summary.json")) if run_dir else None
    page = _html(folder, results, run_dir, summary, responses, pairs)
    if not storage.is_uri(folder):
        (Path(folder)).mkdir(parents=True, exist_ok=True)
        (Path(folder) / HTML).write_text(page, encoding="utf-8")
        return str(_draw(Path(folder), results, run_dir, current))
    with tempfile.TemporaryDirectory(prefix="rayalign-report-") as tmp:
        local = _draw(Path(tmp), results, run_dir, current)
        for png in sorted((Path(tmp) / "plots").glob("*.png")):
            storage.write_bytes(storage.join(folder, "plots", png.name), png.read_bytes())
        storage.write_text(storage.join(folder, HTML), page)
        target = storage.join(folder, "report.md")
        storage.write_text(target, local.read_text())
    return target


HTML = "report.html"
PAIR_STAGES = ("clair", "judge")  # stages whose output is a pairs dataset (prompt, chosen, rejected)
PAIR_ROWS_READ = 200


def pairs_folder(summary: dict | None) -> str | None:
    """The output of the run's last pair-making stage (`clair`, `judge`), if it finished."""
    for s in reversed((summary or {}).get("stages") or []):
        if s.get("stage") in PAIR_STAGES and s.get("status") == "complete" and s.get("output"):
            return str(s["output"])
    return None


def read_pairs(folder: str, limit: int = PAIR_ROWS_READ) -> list[dict]:
    """Pairs whose chosen and rejected answers differ, from a pairs dataset's shards ([] if none)."""
    from rayalign.data.shards import read_dataset

    try:
        table = read_dataset(folder, columns=["id", "prompt", "chosen", "rejected"])
    except (FileNotFoundError, OSError, KeyError, ValueError):
        return []
    rows = table.slice(0, limit).to_pylist()
    return [r for r in rows if r.get("chosen") != r.get("rejected")]


def _html(
    folder: str | Path,
    results: dict,
    run_dir: str | Path | None,
    summary: dict | None,
    responses: str | None,
    pairs: str | None,
) -> str:
    from rayalign.eval.report_html import render

    responses = responses or storage.join(storage.parent(folder), "responses.jsonl")
    records = read_jsonl(responses) if storage.exists(responses) else []
    pairs = pairs or pairs_folder(summary)
    return render(results, records, training_logs(run_dir), summary, read_pairs(pairs) if pairs else [], pairs)


def _draw(folder: Path, results: dict, run_dir: str | Path | None, current: tuple[int, dict] | None) -> Path:
    """The report into a local folder (tables, then plots); see write_report."""
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tags = [t for t in ("baseline", "aligned") if t in results]
    md = ["# rayalign evaluation report", ""]
    md += [f"- {tag}: `{results['models'][tag]}`" for tag in tags]
    md += [f"- suite: {results.get('suite')} ({results.get('prompts')} prompts)", ""]
    md += _summary_md(results, tags) + _by_kind_md(results, tags, plots) + report_sections(results)
    summary = storage.read_json(storage.join(run_dir, "summary.json")) if run_dir else None
    logs = training_logs(run_dir)
    md += _stage_table(summary) + _rounds_table(round_rows(summary, logs, current)) + _curves_md(logs, plots)
    path = folder / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _summary_md(results: dict, tags: list[str]) -> list[str]:
    md = ["## Summary", "", "| metric | " + " | ".join(tags) + " |", "|---|" + "---:|" * len(tags)]
    rows = [
        ("prompt-level accuracy", lambda r: r["ifeval"]["prompt_accuracy"]),
        ("instruction-level accuracy", lambda r: r["ifeval"]["instruction_accuracy"]),
        ("reward-model score (mean)", lambda r: r.get("reward", {}).get("mean")),
        ("held-out preference accuracy", lambda r: r.get("heldout", {}).get("accuracy")),
        ("held-out log-prob margin", lambda r: r.get("heldout", {}).get("margin")),
    ]
    for label, get in rows:
        vals = [get(results[t]) for t in tags]
        if any(v is not None for v in vals):
            md.append(f"| {label} | " + " | ".join(_f(v) for v in vals) + " |")
    md.append("")
    if "judge" in results:
        j = results["judge"]
        md += [
            f"LLM judge, aligned vs baseline over {j['pairs']} prompts (both orders): win rate "
            f"**{j['win_rate']:.3f}** ({j['wins']} wins, {j['losses']} losses, {j['ties']} split/unclear).",
            "",
        ]
    return md


def _by_kind_md(results: dict, tags: list[str], plots: Path) -> list[str]:
    by_kind = results["aligned"]["ifeval"]["by_kind"]
    counts = results["aligned"]["ifeval"]["kind_counts"]
    md = [
        "## Pass rate by constraint kind",
        "",
        "| kind | n | " + " | ".join(tags) + (" | Δ |" if len(tags) == 2 else " |"),
        "|---|---:|" + "---:|" * len(tags) + ("---:|" if len(tags) == 2 else ""),
    ]
    for k in sorted(by_kind):
        vals = [results[t]["ifeval"]["by_kind"].get(k) for t in tags]
        delta = f" | {vals[1] - vals[0]:+.3f}" if len(tags) == 2 else ""
        md.append(f"| {k} | {counts[k]} | " + " | ".join(_f(v) for v in vals) + delta + " |")
    plot_by_kind(results, plots / "ifeval_by_kind.png")
    return [*md, "", "![pass rate by kind](plots/ifeval_by_kind.png)", ""]


def _curves_md(logs: dict[str, list[dict]], plots: Path) -> list[str]:
    md = ["## Training curves", ""] if logs else []
    for name, rows in logs.items():
        safe = name.replace("/", "_")
        loss_keys = [k for k in rows[0] if "loss" in k and isinstance(rows[0][k], (int, float))]
        if loss_keys:
            plot_curves(rows, loss_keys, f"{name}: loss", plots / f"train_{safe}.png")
            first, last = rows[0].get(loss_keys[0]), rows[-1].get(loss_keys[0])
            md += [
                f"### {name}",
                "",
                f"{len(rows)} logged steps; {loss_keys[0]} {_f(first)} → {_f(last)}",
                "",
                f"![{name} loss](plots/train_{safe}.png)",
                "",
            ]
        # preference stages log margins and the implicit rewards of chosen / rejected responses
        margin_keys = sorted(
            {
                k
                for r in rows
                for k in r
                if ("margin" in k or k.startswith("rewards")) and isinstance(r[k], (int, float))
            }
        )
        if margin_keys:
            plot_curves(rows, margin_keys, f"{name}: reward margins", plots / f"margins_{safe}.png")
            md += [f"![{name} margins](plots/margins_{safe}.png)", ""]
        md += _online_md(name, rows, plots)
    return md


# Policy-gradient stages (GRPO) log rollout metrics per step; one plot per group of comparable scale.
ONLINE_KEYS = ("reward_mean", "pass_rate", "kl", "clip_fraction", "rollout_tokens_per_s")
ONLINE_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("rewards", "reward and pass rate", ("reward_mean", "reward_std", "pass_rate")),
    ("kl", "KL to the reference and clipped ratio share", ("kl", "clip_fraction")),
    ("length", "response length (tokens)", ("response_length",)),
    ("throughput", "tokens/s of rollout and of training", ("rollout_tokens_per_s", "tokens_per_s")),
)


def online_keys(rows: list[dict]) -> dict[str, list[str]]:
    """Plot group → the keys of it present in a policy-gradient stage's rows (`reward/<name>`, the
    part of each configured reward, joins "rewards"); {} for other stages."""
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not present & set(ONLINE_KEYS):
        return {}
    groups = {g: [k for k in keys if k in present] for g, _, keys in ONLINE_GROUPS}
    groups["rewards"] += sorted(k for k in present if k.startswith("reward/") and k.count("/") == 1)
    return {g: keys for g, keys in groups.items() if keys}


def _online_md(name: str, rows: list[dict], plots: Path) -> list[str]:
    groups = online_keys(rows)
    if not groups:
        return []
    safe, titles = name.replace("/", "_"), {g: t for g, t, _ in ONLINE_GROUPS}
    md = []
    for key in ("reward_mean", "pass_rate"):
        pts = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            md.append(f"{key} {_f(float(pts[0]))} → {_f(float(pts[-1]))} over {len(pts)} steps")
    md = ["; ".join(md), ""] if md else []
    for group, keys in groups.items():
        plot_curves(rows, keys, f"{name}: {titles[group]}", plots / f"{group}_{safe}.png")
        md += [f"![{name} {titles[group]}](plots/{group}_{safe}.png)", ""]
    return md
