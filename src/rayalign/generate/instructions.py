"""The training prompts' instruction templates: one phrasing per constraint kind, and which kinds combine.

The bundled training prompts (`rayjobs/data/make_sample_data.py`) are built from these; so is the
packaged `ifeval` suite (`rayalign.eval.make_suite`), which therefore measures trained-template
performance. The independent held-out suite (`rayalign.eval.heldout`) is written apart: its own
paraphrase families, none sharing a run of five words with the training prompts (a test checks the
n-gram overlap), and kinds no training prompt carries (`rayalign.checks.HELDOUT_KINDS`). Training
code never imports the eval package's generators (a test checks that too).
"""

from __future__ import annotations

import random

OPENERS = ["My answer is", "Here is the answer", "In short", "Good question", "To begin"]
CLOSERS = ["Is there anything else I can help with?", "That is all.", "Hope this helps.", "The end."]


def instruction(kind: str, rng: random.Random, keywords: list[str]) -> tuple[str, dict]:
    """One training instruction sentence and the constraint that checks it (one phrasing per kind).

    One flat branch per constraint kind (longer than 60 lines): the table of kinds reads best in
    one place, next to the checks' own table in `rayalign/checks.py`.
    """
    if kind == "lowercase":
        return "Your entire response must be in lowercase letters; no capital letters are allowed.", {"kind": kind}
    if kind == "uppercase":
        return "Your entire response must be in English capital letters only.", {"kind": kind}
    if kind == "include_keywords":
        ks = rng.sample(keywords, 2)
        return f"Include the keywords '{ks[0]}' and '{ks[1]}' in your response.", {"kind": kind, "keywords": ks}
    if kind == "forbidden_words":
        ws = rng.sample(keywords, 2)
        return f"Do not use the words '{ws[0]}' or '{ws[1]}' anywhere in your response.", {"kind": kind, "words": ws}
    if kind == "keyword_frequency":
        k, n = rng.choice(keywords), rng.choice([2, 3])
        return f"Use the word '{k}' at least {n} times.", {"kind": kind, "keyword": k, "min": n}
    if kind == "start_with":
        p = rng.choice(OPENERS)
        return f"Begin your response with the exact phrase '{p}'.", {"kind": kind, "phrase": p}
    if kind == "end_with":
        p = rng.choice(CLOSERS)
        return f"Finish your response with the exact phrase '{p}' and write nothing after it.", {
            "kind": kind,
            "phrase": p,
        }
    if kind == "bullet_count":
        n = rng.choice([2, 3, 4, 5])
        return (
            f"Your answer must contain exactly {n} bullet points, written as markdown bullets like: - point.",
            {"kind": kind, "count": n},
        )
    if kind == "json_format":
        return "Wrap your entire output in JSON format; the whole answer must be valid JSON.", {"kind": kind}
    if kind == "max_words":
        n = rng.choice([15, 20, 30, 40])
        return f"Answer in at most {n} words.", {"kind": kind, "max": n}
    if kind == "min_words":
        n = rng.choice([40, 60, 80])
        return f"Write at least {n} words.", {"kind": kind, "min": n}
    if kind == "max_sentences":
        n = rng.choice([1, 2, 3])
        s = "sentence" if n == 1 else "sentences"
        return f"Answer in at most {n} {s}.", {"kind": kind, "max": n}
    if kind == "no_commas":
        return "Do not use any commas in your response.", {"kind": kind}
    if kind == "sections":
        n = rng.choice([2, 3])
        return (
            f"Split your response into {n} sections, starting each with 'Section X' (Section 1, Section 2, ...).",
            {"kind": kind, "count": n, "marker": "Section"},
        )
    if kind == "paragraphs":
        n = rng.choice([2, 3])
        return f"Write exactly {n} paragraphs, separated from each other by one blank line.", {"kind": kind, "count": n}
    if kind == "quotation":
        return "Wrap your entire response in double quotation marks.", {"kind": kind}
    if kind == "title":
        return "Give your answer a title wrapped in double angular brackets, such as <<my title>>.", {"kind": kind}
    if kind == "placeholders":
        n = rng.choice([1, 2, 3])
        return (
            f"Include at least {n} placeholder(s) in square brackets, such as [name] or [date].",
            {"kind": kind, "min": n},
        )
    if kind == "postscript":
        return "At the end of your response, add a postscript starting with P.S.", {"kind": kind, "marker": "P.S."}
    raise ValueError(kind)


# second instructions that combine with any primary except the ones listed as conflicting
SECONDARY = ["no_commas", "include_keywords", "forbidden_words", "max_words"]
CONFLICTS = {
    "json_format": set(SECONDARY),  # JSON needs commas; keep JSON prompts single-instruction
    "min_words": {"max_words"},
    "max_sentences": {"max_words"},
    "sections": {"max_words"},
    "paragraphs": {"max_words"},
    "keyword_frequency": {"include_keywords", "forbidden_words", "max_words"},
    "include_keywords": {"include_keywords", "forbidden_words"},
    "forbidden_words": {"include_keywords", "forbidden_words"},
    "no_commas": {"no_commas"},
    "max_words": {"max_words"},
    "bullet_count": {"max_words"},
    "placeholders": {"max_words"},
    "postscript": {"max_words"},
    "uppercase": {"include_keywords"},
}
