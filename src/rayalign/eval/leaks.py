"""Format leaks and degeneration: what pass rates hide and a user sees in the first answer.

A format a prompt did not ask for is a leak: quotation marks around the answer, a JSON wrapper, a
P.S., a title. Each leak is counted only over the prompts that do not ask for that format (a
prompt asking for a postscript may have one). Degeneration: an answer repeats one 4-word phrase 4
or more times ("Here is my answer: Here is my answer: ..."). Length collapse: the median number of
words of the answers to prompts that set no length limit (`LENGTH_KINDS`), and the share under 20
words — training on "at most N words" fixes can teach every answer to stop early. The eval stage
writes the rates per
model (`results[label]["leaks"]`) and the report puts base and aligned side by side, with sample
answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from rayalign.checks import FENCE, TITLE, WORD, postscript, repeated_phrase


def starts_quoted(r: str) -> bool:
    return r.strip()[:1] in ('"', "“")


def json_wrapped(r: str) -> bool:
    text = r.strip()
    fenced = FENCE.match(text)
    text = fenced.group(1).strip() if fenced else text
    if not text.startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def has_postscript(r: str) -> bool:
    return postscript(r, "P.S.") or postscript(r, "P.P.S")


HEADING = re.compile(r"^\s*#{1,6}\s+\S")


def has_title(r: str) -> bool:
    first = next((line for line in r.splitlines() if line.strip()), "")
    return TITLE.search(r) is not None or HEADING.match(first) is not None


# leak -> (detector, constraint kinds that ask for that format)
LEAKS: dict[str, tuple[Callable[[str], bool], set[str]]] = {
    "quotes": (starts_quoted, {"quotation"}),
    "json": (json_wrapped, {"json_format"}),
    "postscript": (has_postscript, {"postscript"}),
    "title": (has_title, {"title", "sections"}),
}


def leak_rates(suite: list[dict], responses: list[str]) -> dict:
    """{leak: {rate, count, n}} over the prompts not asking for it; `any` over prompts asking for none of
    them; `repetition` over every prompt."""
    out = {}
    asked = [{c["kind"] for c in row["constraints"]} for row in suite]
    for name, (detect, kinds) in LEAKS.items():
        hits = [detect(r) for r, k in zip(responses, asked) if not k & kinds]
        out[name] = _rate(hits)
    every = set().union(*(k for _, k in LEAKS.values()))
    out["any"] = _rate([any(d(r) for d, _ in LEAKS.values()) for r, k in zip(responses, asked) if not k & every])
    out["repetition"] = _rate([repeated_phrase(r) for r in responses])
    out["length"] = answer_lengths(suite, responses)
    return out


# constraint kinds that set an answer's length: their prompts are left out of the length measure
LENGTH_KINDS = {"max_words", "min_words", "max_sentences"}
SHORT_WORDS = 20


def answer_lengths(suite: list[dict], responses: list[str]) -> dict:
    """Words per answer over the prompts that set no length limit: median, mean, and the share of
    answers under `SHORT_WORDS` words (`short`)."""
    counts = sorted(
        len(WORD.findall(r))
        for r, row in zip(responses, suite)
        if not {c["kind"] for c in row["constraints"]} & LENGTH_KINDS
    )
    if not counts:
        return {"n": 0, "median": 0.0, "mean": 0.0, "short": _rate([])}
    mid = len(counts) // 2
    median = counts[mid] if len(counts) % 2 else (counts[mid - 1] + counts[mid]) / 2
    return {
        "n": len(counts),
        "median": float(median),
        "mean": sum(counts) / len(counts),
        "short": _rate([c < SHORT_WORDS for c in counts]),
    }


def _rate(hits: list[bool]) -> dict:
    return {"rate": sum(hits) / len(hits) if hits else 0.0, "count": sum(hits), "n": len(hits)}


# the report's row label of each measure `leak_rates` returns (report.md and report.html)
LEAK_LABELS = {
    "quotes": "starts with a quote",
    "json": "JSON wrapper",
    "postscript": "P.S.",
    "title": "title",
    "any": "any of these",
    "repetition": "repeated 4-word phrase",
}


def leaks_md(results: dict, tags: list[str]) -> list[str]:
    if not all("leaks" in results.get(t, {}) for t in tags) or not tags:
        return []
    md = [
        "## Format leaks and repetition",
        "",
        "Share of answers that add a format the prompt did not ask for (n = prompts not asking for it), "
        "and of answers repeating one 4-word phrase 4+ times (all prompts); answer length where the "
        'prompt sets none (a model taught "at most N words" everywhere answers shorter).',
        "",
        "| | n | " + " | ".join(tags) + " |",
        "|---|---:|" + "---:|" * len(tags),
    ]
    for key, label in LEAK_LABELS.items():
        cells = [f"{results[t]['leaks'][key]['rate']:.3f} ({results[t]['leaks'][key]['count']})" for t in tags]
        md.append(f"| {label} | {results[tags[0]]['leaks'][key]['n']} | " + " | ".join(cells) + " |")
    if all("length" in results[t]["leaks"] for t in tags):  # results written before the length measure lack it
        lengths = [results[t]["leaks"]["length"] for t in tags]
        n = lengths[0]["n"]
        md.append(
            f"| words per answer, median (prompts setting no length) | {n} | "
            + " | ".join(f"{x['median']:.0f}" for x in lengths)
            + " |"
        )
        md.append(
            f"| answers under {SHORT_WORDS} words (prompts setting no length) | {n} | "
            + " | ".join(f"{x['short']['rate']:.3f} ({x['short']['count']})" for x in lengths)
            + " |"
        )
    return [*md, ""]


def samples_md(
    samples: list[dict], tags: list[str], k: int = 10, width: int = 300, title: str = "Sample answers"
) -> list[str]:
    """The first `k` rows with the `tags` columns side by side (each cut at `width` characters)."""
    if not samples:
        return []
    md = [f"## {title} ({min(k, len(samples))})", "", "| prompt | " + " | ".join(tags) + " |"]
    md.append("|---|" + "---|" * len(tags))
    for s in samples[:k]:
        cells = [_cell(s["prompt"], width)] + [_cell(str(s.get(t, "")), width) for t in tags]
        md.append("| " + " | ".join(cells) + " |")
    return [*md, ""]


def _cell(text: str, width: int) -> str:
    t = text if len(text) <= width else text[:width] + "…"
    return t.replace("|", "\\|").replace("\n", "<br>")
