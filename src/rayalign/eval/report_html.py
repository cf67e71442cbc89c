"""`report.html`: the eval report as one self-contained page (no network: CSS, JS and plots inline).

Sections: the headline (prompt- and instruction-level pass rates with their 95% intervals and the
paired difference, from `results["stats"]` when the eval computed it, else the point estimates),
side effects (format leaks, repetition, answer length), pass rate by constraint kind, training
curves (inline SVG, from each training stage's `metrics.jsonl` under the run folder), every suite
prompt with the baseline and aligned answers side by side and each check's pass/fail (filterable by
kind and by whether the outcome changed), sample training pairs (chosen vs rejected, word-level edit
highlighted) when a pairs dataset is known, and the pipeline's stages.

Every piece of text is HTML-escaped: answers are model output and may hold markup of any kind.
"""

from __future__ import annotations

import difflib
import html
import json
import re
from typing import Any

from rayalign.eval.leaks import LEAK_LABELS, SHORT_WORDS
from rayalign.results import summary_warnings
from rayalign.textfmt import number

PAIRS_SHOWN = 12
MAX_POINTS = 400  # points per curve drawn (longer logs are thinned evenly)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: Any) -> str:
    return esc(number(v))


# ---------------------------------------------------------------------------------------------
# headline and intervals


def _interval(r: dict | None) -> str:
    if not r or r.get("lo") is None:
        return ""
    return f'<span class="ci">95% CI {pct(r["lo"])} – {pct(r["hi"])}, n={int(r.get("n", 0))}</span>'


def _tags(results: dict) -> list[str]:
    return [t for t in ("baseline", "aligned") if isinstance(results.get(t), dict)]


def _stat_label(stats: dict, tag: str) -> str | None:
    """The label `stats["rates"]` uses for an eval model tag (`baseline` may be named `base`)."""
    rates = stats.get("rates") or {}
    for label in (tag, "base" if tag == "baseline" else tag):
        if label in rates:
            return label
    return None


def headline(results: dict) -> str:
    tags, stats = _tags(results), results.get("stats") or {}
    cards = []
    for level, key in (("prompt-level", "prompt_accuracy"), ("instruction-level", "instruction_accuracy")):
        cells = []
        for tag in tags:
            label = _stat_label(stats, tag)
            r = (stats.get("rates") or {}).get(label or "", {}).get(level.replace("-", "_"))
            value = r["mean"] if r else results[tag]["ifeval"].get(key)
            cells.append(
                f'<div class="rate {esc(tag)}"><div class="tag">{esc(tag)}</div>'
                f'<div class="big">{pct(value)}</div>{_interval(r)}</div>'
            )
        cards.append(
            f'<div class="card"><h3>{esc(level)} pass rate</h3><div class="rates">{"".join(cells)}</div></div>'
        )
    for name, p in (stats.get("paired") or {}).items():
        verdict = (
            '<span class="badge noise">within noise</span>'
            if p.get("within_noise")
            else '<span class="badge sig">beyond noise</span>'
        )
        sign = "" if p.get("within_noise") else "up" if p["diff"] > 0 else "down" if p["diff"] < 0 else ""
        cards.append(
            f'<div class="card"><h3>{esc(name)} ({esc(p.get("metric", "prompt_level"))})</h3>'
            f'<div class="big {sign}">{100 * p["diff"]:+.1f} pts</div>'
            f'<span class="ci">95% CI {100 * p["lo"]:+.1f} – {100 * p["hi"]:+.1f} pts, p={p["p_value"]:.3g}, '
            f"n={int(p['n'])}</span> {verdict}</div>"
        )
    suite = stats.get("suite")
    note = ""
    if isinstance(suite, dict) and suite.get("reads"):
        note = (
            f'<p class="note">Suite {esc(suite.get("name"))} has been scored {int(suite["reads"])} time(s) on '
            f"this machine; every read of a held-out suite spends some of its independence.</p>"
        )
    for tag in tags:
        cut = results[tag].get("truncated")
        if cut:
            note += (
                f'<p class="note warn">{int(cut)}/{_num(results.get("prompts"))} {esc(tag)} answers were cut at '
                f"max_tokens: their checks judged unfinished text.</p>"
            )
    return f'<section id="headline"><div class="cards">{"".join(cards)}</div>{note}</section>'


def extra_scores(results: dict) -> str:
    tags = _tags(results)
    rows = []
    for label, get in (
        ("reward-model score (mean)", lambda r: r.get("reward", {}).get("mean")),
        ("held-out preference accuracy", lambda r: r.get("heldout", {}).get("accuracy")),
        ("held-out log-prob margin", lambda r: r.get("heldout", {}).get("margin")),
    ):
        vals = [get(results[t]) for t in tags]
        if any(v is not None for v in vals):
            rows.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td class=num>{_num(v)}</td>" for v in vals) + "</tr>")
    judge = ""
    if isinstance(results.get("judge"), dict):
        j = results["judge"]
        judge = (
            f"<p>LLM judge, aligned vs baseline over {int(j['pairs'])} prompts (both orders): win rate "
            f"<b>{j['win_rate']:.3f}</b> ({int(j['wins'])} wins, {int(j['losses'])} losses, "
            f"{int(j['ties'])} split).</p>"
        )
    if not rows and not judge:
        return ""
    head = "<tr><th>score</th>" + "".join(f"<th>{esc(t)}</th>" for t in tags) + "</tr>"
    table = f"<table>{head}{''.join(rows)}</table>" if rows else ""
    return f'<section id="scores"><h2>Other scores</h2>{table}{judge}</section>'


# ---------------------------------------------------------------------------------------------
# side effects: what pass rates hide (format leaks, repetition, answer length)


def _more_is_worse(d: float) -> str:
    """A change's cell class where an increase is the bad direction."""
    return "down" if d > 0 else "up" if d < 0 else ""


def side_effects(results: dict) -> str:
    """Format leaks and repetition per model (share and count, n = the prompts each is counted over),
    the aligned model's change coloured (more is worse), and answer length where no length is asked."""
    tags = _tags(results)
    if not tags or not all(isinstance(results[t].get("leaks"), dict) for t in tags):
        return ""
    leaks = [results[t]["leaks"] for t in tags]
    head = "<tr><th>answers</th><th>n</th>" + "".join(f"<th>{esc(t)}</th>" for t in tags)
    head += "<th>Δ</th></tr>" if len(tags) == 2 else "</tr>"
    rows = []
    for key, label in LEAK_LABELS.items():
        if not all(key in x for x in leaks):
            continue
        cells = "".join(f"<td class=num>{pct(x[key]['rate'])} ({int(x[key]['count'])})</td>" for x in leaks)
        delta = ""
        if len(tags) == 2:
            d = leaks[1][key]["count"] - leaks[0][key]["count"]
            delta = f'<td class="num {_more_is_worse(d)}">{d:+d}</td>'
        rows.append(f"<tr><td>{esc(label)}</td><td class=num>{int(leaks[0][key]['n'])}</td>{cells}{delta}</tr>")
    if all("length" in x for x in leaks):
        lengths = [x["length"] for x in leaks]
        n = int(lengths[0]["n"])
        median = "".join(f"<td class=num>{x['median']:.0f}</td>" for x in lengths)
        short = "".join(f"<td class=num>{pct(x['short']['rate'])} ({int(x['short']['count'])})</td>" for x in lengths)
        if len(tags) == 2:  # the median's change in words (uncoloured); more short answers is worse
            median += f"<td class=num>{lengths[1]['median'] - lengths[0]['median']:+.0f}</td>"
            d = int(lengths[1]["short"]["count"] - lengths[0]["short"]["count"])
            short += f'<td class="num {_more_is_worse(d)}">{d:+d}</td>'
        rows.append(f"<tr><td>median words (prompts setting no length)</td><td class=num>{n}</td>{median}</tr>")
        rows.append(
            f"<tr><td>under {SHORT_WORDS} words (prompts setting no length)</td><td class=num>{n}</td>{short}</tr>"
        )
    return (
        '<section id="effects"><h2>Side effects</h2><p class="note">What pass rates hide: a format the '
        "prompt did not ask for (counted over the prompts not asking for it), a looping phrase (every "
        "prompt), and answer length where the prompt sets none.</p>"
        f'<table class="kinds">{head}{"".join(rows)}</table></section>'
    )


# ---------------------------------------------------------------------------------------------
# pass rate by kind


def by_kind(results: dict) -> str:
    tags = _tags(results)
    if "aligned" not in tags:
        return ""
    ife = results["aligned"]["ifeval"]
    stats = results.get("stats") or {}
    head = "<tr><th>kind</th><th>n</th>" + "".join(f"<th>{esc(t)}</th>" for t in tags)
    head += "<th>Δ</th></tr>" if len(tags) == 2 else "</tr>"
    labels = [_stat_label(stats, t) for t in tags]
    paired = (stats.get("paired_kinds") or {}).get(f"{labels[-1]} - {labels[0]}", {}) if len(tags) == 2 else {}
    rows = []
    for kind in sorted(ife.get("by_kind", {})):
        cells = []
        vals = []
        for tag in tags:
            v = results[tag]["ifeval"].get("by_kind", {}).get(kind)
            vals.append(v)
            label = _stat_label(stats, tag)
            ci = ((stats.get("rates") or {}).get(label or "", {}).get("kinds") or {}).get(kind)
            bar = f'<div class="bar {esc(tag)}" style="width:{0 if v is None else round(100 * v)}%"></div>'
            title = f' title="95% CI {pct(ci["lo"])} – {pct(ci["hi"])}"' if ci else ""
            cells.append(f'<td class="num"{title}><div class="barbox">{bar}</div>{pct(v)}</td>')
        delta = ""
        if len(tags) == 2 and None not in vals:
            d = vals[1] - vals[0]
            pk = paired.get(kind)
            title = f' title="paired 95% CI {100 * pk["lo"]:+.1f} – {100 * pk["hi"]:+.1f}"' if pk else ""
            # beyond noise (the paired interval excludes 0): marked, so a kind really down stands out
            mark = "*" if pk and not pk["within_noise"] else ""
            delta = f'<td class="num {"up" if d > 0 else "down" if d < 0 else ""}"{title}>{100 * d:+.1f}{mark}</td>'
        n = int(ife.get("kind_counts", {}).get(kind, 0))
        rows.append(f"<tr><td>{esc(kind)}</td><td class=num>{n}</td>{''.join(cells)}{delta}</tr>")
    note = '<p class="note">* the paired 95% interval of the change excludes 0 (beyond noise).</p>' if paired else ""
    return (
        f'<section id="kinds"><h2>Pass rate by constraint kind</h2>{note}<table class="kinds">{head}'
        f"{''.join(rows)}</table></section>"
    )


# ---------------------------------------------------------------------------------------------
# training curves (inline SVG)

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


def svg_chart(rows: list[dict], keys: list[str], title: str, width: int = 520, height: int = 220) -> str:
    """A line chart of `keys` over `step` as an inline SVG (axes with min/max labels, a legend)."""
    series = []
    for k in keys:
        pts = [(float(r["step"]), float(r[k])) for r in rows if _is_num(r.get(k)) and _is_num(r.get("step"))]
        if len(pts) > MAX_POINTS:
            pts = [pts[int(i * (len(pts) - 1) / (MAX_POINTS - 1))] for i in range(MAX_POINTS)]
        if pts:
            series.append((k, pts))
    if not series:
        return ""
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 == y0:  # a flat series: drawn in the middle of a ±5% band
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 56, 12, 28, 30
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{esc(title)}">',
        f'<text x="{left}" y="16" class="ct">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="plot"/>',
    ]
    for frac in (0.25, 0.5, 0.75):
        y = top + frac * h
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
    parts += [
        f'<text x="{left - 6}" y="{top + 4}" class="ax" text-anchor="end">{y1:.4g}</text>',
        f'<text x="{left - 6}" y="{top + h}" class="ax" text-anchor="end">{y0:.4g}</text>',
        f'<text x="{left}" y="{top + h + 16}" class="ax">{x0:.0f}</text>',
        f'<text x="{left + w}" y="{top + h + 16}" class="ax" text-anchor="end">{x1:.0f}</text>',
        f'<text x="{left + w / 2}" y="{top + h + 16}" class="ax" text-anchor="middle">step</text>',
    ]
    for i, (k, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        lx = left + w - 150
        ly = top + 14 + 14 * i
        parts.append(f'<line x1="{lx}" x2="{lx + 16}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="{lx + 20}" y="{ly}" class="ax">{esc(k)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def curves(logs: dict[str, list[dict]]) -> str:
    if not logs:
        return ""
    blocks = []
    for name, rows in logs.items():
        numeric = sorted({k for r in rows for k, v in r.items() if _is_num(v)})
        groups = [
            ("loss", [k for k in numeric if "loss" in k]),
            ("reward margins", [k for k in numeric if "margin" in k or k.startswith("rewards")]),
            ("reward and pass rate", [k for k in ("reward_mean", "pass_rate") if k in numeric]),
            ("tokens/s", [k for k in ("tokens_per_s",) if k in numeric]),
        ]
        charts = "".join(svg_chart(rows, keys, f"{name}: {title}") for title, keys in groups if keys)
        loss = next((k for k in numeric if k == "loss"), None)
        line = ""
        if loss:
            pts = [r[loss] for r in rows if _is_num(r.get(loss))]
            line = f"<p>{len(rows)} logged steps; loss {pts[0]:.4g} → {pts[-1]:.4g}</p>"
        blocks.append(f'<div class="curve"><h3>{esc(name)}</h3>{line}<div class="charts">{charts}</div></div>')
    return f'<section id="curves"><h2>Training curves</h2>{"".join(blocks)}</section>'


# ---------------------------------------------------------------------------------------------
# prompts with both answers


def _constraint_label(c: dict) -> str:
    params = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in c.items() if k != "kind")
    return f"{c.get('kind')}({params})" if params else str(c.get("kind"))


def change_of(rec: dict) -> str:
    """How the outcome moved from baseline to aligned: improved / regressed / changed / same."""
    if "baseline" not in rec or "aligned" not in rec:
        return "same"
    b, a = rec["baseline"].get("passed") or [], rec["aligned"].get("passed") or []
    if b == a:
        return "same"
    if all(a) and not all(b):
        return "improved"
    if all(b) and not all(a):
        return "regressed"
    return "changed"


def answers(records: list[dict]) -> str:
    if not records:
        return ""
    tags = [t for t in ("baseline", "aligned") if any(t in r for r in records)]
    kinds = sorted({c.get("kind", "") for r in records for c in r.get("constraints", [])})
    changes = {k: sum(change_of(r) == k for r in records) for k in ("improved", "regressed", "changed", "same")}
    kind_opts = "".join(f'<option value="{esc(k)}">{esc(k)}</option>' for k in kinds)
    change_opts = "".join(f'<option value="{k}">{k} ({n})</option>' for k, n in changes.items() if k != "same" or n)
    controls = (
        '<div class="controls">'
        f'<label>kind <select id="f-kind"><option value="">all kinds</option>{kind_opts}</select></label>'
        '<label>outcome <select id="f-change"><option value="">all prompts</option>'
        f'<option value="any">changed at all ({len(records) - changes["same"]})</option>{change_opts}</select></label>'
        '<label>search <input id="f-text" type="search" placeholder="words in prompt or answers"></label>'
        f'<span id="shown" class="count">{len(records)} of {len(records)} prompts</span></div>'
    )
    head = "<tr><th>prompt and checks</th>" + "".join(f"<th>{esc(t)} answer</th>" for t in tags) + "</tr>"
    rows = []
    for rec in records:
        cons = rec.get("constraints", [])
        chips = []
        for i, c in enumerate(cons):
            marks = "".join(
                f'<span class="mark {"pass" if _passed(rec, t, i) else "fail"}" title="{esc(t)}">'
                f"{'✓' if _passed(rec, t, i) else '✗'}</span>"
                for t in tags
                if t in rec
            )
            chips.append(f'<li class="check">{marks}<code>{esc(_constraint_label(c))}</code></li>')
        change = change_of(rec)
        cells = []
        for t in tags:
            ans = rec.get(t) or {}
            passed = ans.get("passed") or []
            status = "pass" if passed and all(passed) else "fail"
            cells.append(
                f'<td class="answer {status}"><div class="verdict">{esc(t)}: {sum(map(bool, passed))}/{len(passed)} checks'
                f"</div>{_answer_text(str(ans.get('response', '')))}</td>"
            )
        kinds_attr = " ".join(sorted({str(c.get("kind", "")) for c in cons}))
        rows.append(
            f'<tr class="row {change}" data-kinds="{esc(kinds_attr)}" data-change="{change}">'
            f'<td class="prompt"><div class="pid">{esc(rec.get("id", ""))} <span class="badge {change}">{change}</span>'
            f'</div><div class="text">{esc(rec.get("prompt", ""))}</div><ul class="checks">{"".join(chips)}</ul></td>'
            f"{''.join(cells)}</tr>"
        )
    legend = '<p class="note">✓/✗ per check: one mark per model, in the column order.</p>'
    return (
        f'<section id="answers"><h2>Answers, side by side</h2>{controls}{legend}'
        f'<table id="answers-table">{head}{"".join(rows)}</table></section>'
    )


def _answer_text(text: str) -> str:
    """The answer as escaped text; blank lines around it are not drawn, a blank answer says so."""
    shown = text.strip("\n").rstrip()
    if not shown.strip():
        return f'<div class="text empty">(empty answer{f": {len(text)} whitespace characters" if text else ""})</div>'
    return f'<div class="text">{esc(shown)}</div>'


def _passed(rec: dict, tag: str, i: int) -> bool:
    passed = (rec.get(tag) or {}).get("passed") or []
    return bool(passed[i]) if i < len(passed) else False


# ---------------------------------------------------------------------------------------------
# training pairs with the edit highlighted

TOKEN = re.compile(r"\s+|[^\s]+")


def word_diff(rejected: str, chosen: str) -> tuple[str, str]:
    """(rejected, chosen) as HTML with the words only one side has marked (`<del>` / `<ins>`)."""
    a, b = TOKEN.findall(rejected), TOKEN.findall(chosen)
    left, right = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        old, new = esc("".join(a[i1:i2])), esc("".join(b[j1:j2]))
        if op == "equal":
            left.append(old)
            right.append(new)
            continue
        if old:
            left.append(f"<del>{old}</del>")
        if new:
            right.append(f"<ins>{new}</ins>")
    return "".join(left), "".join(right)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt if isinstance(m, dict))
    return str(prompt or "")


def pairs_section(pairs: list[dict], source: str | None) -> str:
    if not pairs:
        return ""
    blocks = []
    for p in pairs[:PAIRS_SHOWN]:
        rej, cho = word_diff(str(p.get("rejected", "")), str(p.get("chosen", "")))
        blocks.append(
            f'<div class="pair"><div class="pid">{esc(p.get("id", ""))}</div>'
            f'<div class="text prompt">{esc(_prompt_text(p.get("prompt")))}</div>'
            f'<div class="sides"><div class="side rejected"><h4>rejected</h4><div class="text">{rej}</div></div>'
            f'<div class="side chosen"><h4>chosen</h4><div class="text">{cho}</div></div></div></div>'
        )
    where = f" from <code>{esc(source)}</code>" if source else ""
    return (
        f'<section id="pairs"><h2>Training pairs</h2><p class="note">{min(len(pairs), PAIRS_SHOWN)} of '
        f"{len(pairs)} pairs{where}; words only the rejected answer has are struck out, words only the chosen "
        f"answer has are highlighted.</p>{''.join(blocks)}</section>"
    )


# ---------------------------------------------------------------------------------------------
# pipeline stages


def stages(summary: dict | None) -> str:
    if not summary or not summary.get("stages"):
        return ""
    rows = []
    for s in summary["stages"]:
        c = s.get("counts") or {}
        counts = " / ".join(number(c.get(k)) for k in ("in", "ok", "out_rows")) if c else ""
        metrics = ", ".join(f"{esc(k)} {_num(v)}" for k, v in list((s.get("metrics") or {}).items())[:6])
        status = "skipped" if s.get("skipped") else s.get("status")
        seconds = s.get("seconds")
        rows.append(
            f"<tr><td>{esc(s.get('id') or s.get('name'))}</td><td>{esc(s.get('stage'))}</td><td>{esc(status)}</td>"
            f"<td class=num>{'' if seconds is None else f'{seconds:.1f}'}</td><td class=num>{counts}</td>"
            f"<td>{metrics}</td></tr>"
        )
    head = (
        "<tr><th>stage</th><th>kind</th><th>status</th><th>seconds</th><th>rows in / ok / out</th><th>metrics</th></tr>"
    )
    warnings = [f"<li><b>{esc(sid)}</b>: {esc(w)}</li>" for sid, w in summary_warnings(summary)]
    note = f'<div class="warnings"><h3>Warnings</h3><ul>{"".join(warnings)}</ul></div>' if warnings else ""
    return f'<section id="stages"><h2>Pipeline stages</h2>{note}<table>{head}{"".join(rows)}</table></section>'


# ---------------------------------------------------------------------------------------------
# the page

CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--base:#94a3b8;--aligned:#2563eb;
--pass:#15803d;--fail:#b91c1c}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#0f172a;color:#f8fafc;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .meta{color:#cbd5e1;font-size:13px}header code{color:#e2e8f0}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 28px;z-index:2}
nav a{margin-right:16px;color:var(--aligned);text-decoration:none}
main{padding:8px 28px 40px;max-width:1400px}section{margin-top:22px}
h2{font-size:18px;border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:14px;margin:0 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:14px}.card{background:#fff;border:1px solid var(--line);border-radius:8px;
padding:14px 18px;min-width:260px}.rates{display:flex;gap:22px}.tag{color:var(--muted);font-size:12px;
text-transform:uppercase;letter-spacing:.04em}.big{font-size:28px;font-weight:600}.rate.aligned .big{color:var(--aligned)}
.rate.baseline .big{color:#475569}.big.up{color:var(--pass)}.big.down{color:var(--fail)}
.ci{display:block;color:var(--muted);font-size:12px}.badge{display:inline-block;font-size:11px;padding:1px 7px;
border-radius:10px;background:#e5e7eb;color:#374151;margin-left:4px}.badge.sig,.badge.improved{background:#dcfce7;
color:#166534}.badge.noise{background:#fef9c3;color:#854d0e}.badge.regressed{background:#fee2e2;color:#991b1b}
.badge.changed{background:#e0e7ff;color:#3730a3}.note{color:var(--muted);font-size:12px}.note.warn{color:#92400e}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);width:100%}
th,td{border-bottom:1px solid var(--line);padding:6px 10px;text-align:left;vertical-align:top}
th{background:#f1f5f9;font-weight:600;font-size:13px}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}td.up{color:var(--pass)}td.down{color:var(--fail)}table.kinds{max-width:860px}#scores table{max-width:640px}
.barbox{display:inline-block;width:90px;height:8px;background:#f1f5f9;margin-right:8px;vertical-align:middle;
border-radius:4px;overflow:hidden}.bar{height:100%}.bar.aligned{background:var(--aligned)}.bar.baseline{background:var(--base)}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fff;border:1px solid var(--line);border-radius:6px}
.chart .plot{fill:#fff;stroke:#cbd5e1}.chart .grid{stroke:#eef2f7}.chart .ax{font-size:10px;fill:#64748b}
.chart .ct{font-size:12px;font-weight:600;fill:#1f2937}
.controls{display:flex;flex-wrap:wrap;gap:16px;align-items:center;margin:8px 0}
.controls select,.controls input{font:inherit;padding:3px 6px;border:1px solid #cbd5e1;border-radius:4px}
.count{color:var(--muted)}.text.empty{color:var(--muted);font-style:italic}#answers-table td{width:33%}.text{white-space:pre-wrap;word-break:break-word;
max-height:260px;overflow:auto}.pid{font-size:12px;color:var(--muted);margin-bottom:4px}
ul.checks{list-style:none;padding:0;margin:8px 0 0}li.check{margin:2px 0;font-size:12px}
li.check code{background:#f1f5f9;padding:0 4px;border-radius:3px}.mark{display:inline-block;width:16px;
font-weight:700}.mark.pass{color:var(--pass)}.mark.fail{color:var(--fail)}
.verdict{font-size:12px;font-weight:600;margin-bottom:4px}td.answer.pass .verdict{color:var(--pass)}
td.answer.fail .verdict{color:var(--fail)}
.pair{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px;margin:10px 0}
.pair .prompt{color:#334155;margin-bottom:8px}.sides{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.side h4{margin:0 0 4px;font-size:12px;text-transform:uppercase;color:var(--muted)}
.side.rejected{border-left:3px solid #fca5a5;padding-left:8px}.side.chosen{border-left:3px solid #86efac;padding-left:8px}
.warnings{background:#fffbeb;border:1px solid #fcd34d;border-radius:8px;padding:8px 14px;margin-bottom:10px}
.warnings ul{margin:4px 0;padding-left:18px}del{background:#fee2e2;color:#991b1b}ins{background:#dcfce7;color:#166534;text-decoration:none}
"""

JS = """
(function(){
  var kind=document.getElementById('f-kind'),change=document.getElementById('f-change'),
      text=document.getElementById('f-text'),shown=document.getElementById('shown');
  if(!kind){return;}
  var rows=Array.prototype.slice.call(document.querySelectorAll('#answers-table tr.row'));
  function apply(){
    var k=kind.value,c=change.value,t=text.value.trim().toLowerCase(),n=0;
    rows.forEach(function(r){
      var ok=(!k||(' '+r.dataset.kinds+' ').indexOf(' '+k+' ')>=0)&&
             (!c||(c==='any'?r.dataset.change!=='same':r.dataset.change===c))&&
             (!t||r.textContent.toLowerCase().indexOf(t)>=0);
      r.hidden=!ok; if(ok){n++;}
    });
    shown.textContent=n+' of '+rows.length+' prompts';
  }
  kind.addEventListener('change',apply);change.addEventListener('change',apply);text.addEventListener('input',apply);
  apply();
})();
"""


def render(
    results: dict,
    records: list[dict],
    logs: dict[str, list[dict]],
    summary: dict | None,
    pairs: list[dict],
    pairs_source: str | None = None,
) -> str:
    """The whole page as one string."""
    tags = _tags(results)
    models = " · ".join(f"{esc(t)}: <code>{esc((results.get('models') or {}).get(t, ''))}</code>" for t in tags)
    meta = f"{models} · suite <code>{esc(results.get('suite'))}</code> ({_num(results.get('prompts'))} prompts)"
    body = [
        headline(results),
        extra_scores(results),
        side_effects(results),
        by_kind(results),
        curves(logs),
        answers(records),
        pairs_section(pairs, pairs_source),
        stages(summary),
    ]
    sections = [
        ("headline", "Headline"),
        ("effects", "Side effects"),
        ("kinds", "By kind"),
        ("curves", "Training"),
        ("answers", "Answers"),
    ]
    sections += [("pairs", "Pairs"), ("stages", "Stages")]
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in sections if f'id="{sid}"' in "".join(body))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>rayalign evaluation report</title><style>{CSS}</style></head><body>"
        f'<header><h1>rayalign evaluation report</h1><div class="meta">{meta}</div></header>'
        f"<nav>{nav}</nav><main>{''.join(body)}</main><script>{JS}</script></body></html>\n"
    )
