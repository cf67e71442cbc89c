"""Generate the project's verifiable instruction-following suite (`suite/ifeval.jsonl`).

    python -m rayalign.eval.make_suite            # rewrites src/rayalign/eval/suite/ifeval.jsonl
    python -m rayalign.eval.make_suite --check    # exit 1 if the committed file differs

Every prompt is a task (from TOPICS) plus one or two instructions whose compliance the code in
`checks.py` verifies. The output is deterministic (a seeded RNG), so the committed file and this
script always agree (a test regenerates it and compares). Rows: {id, prompt, constraints: [...]}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SUITE_PATH = Path(__file__).parent / "suite" / "ifeval.jsonl"
SEED = 20241123
N_PROMPTS = 120

# (task, three topic keywords)
TOPICS: list[tuple[str, list[str]]] = [
    ("Describe the water cycle.", ["evaporation", "clouds", "rain"]),
    ("Explain why the sky is blue.", ["light", "scattering", "atmosphere"]),
    ("Give advice to someone starting to learn the guitar.", ["practice", "chords", "rhythm"]),
    ("Describe a good morning routine.", ["breakfast", "exercise", "plan"]),
    ("Explain how a bicycle works.", ["pedals", "chain", "wheels"]),
    ("Write a short note welcoming a new neighbour.", ["welcome", "street", "coffee"]),
    ("Explain what photosynthesis is.", ["sunlight", "leaves", "oxygen"]),
    ("Describe the city of Paris to a tourist.", ["museum", "river", "bakery"]),
    ("Give tips for saving money.", ["budget", "savings", "expenses"]),
    ("Explain how to make a cup of tea.", ["kettle", "leaves", "water"]),
    ("Describe the planet Mars.", ["red", "dust", "rover"]),
    ("Explain why sleep matters.", ["memory", "rest", "health"]),
    ("Write a product description for a reusable water bottle.", ["steel", "cold", "bottle"]),
    ("Explain how vaccines work.", ["immune", "antibodies", "protection"]),
    ("Describe a walk in a forest.", ["trees", "birds", "path"]),
    ("Give advice for a job interview.", ["research", "questions", "confidence"]),
    ("Explain what a computer program is.", ["instructions", "code", "computer"]),
    ("Describe how bees make honey.", ["nectar", "hive", "flowers"]),
    ("Explain the rules of chess briefly.", ["king", "board", "pieces"]),
    ("Write a thank-you message to a teacher.", ["thank", "lessons", "patience"]),
    ("Explain how to plant a tree.", ["soil", "roots", "water"]),
    ("Describe the ocean to a child.", ["waves", "fish", "salt"]),
    ("Give tips for staying focused while studying.", ["breaks", "notes", "phone"]),
    ("Explain what inflation is.", ["prices", "money", "economy"]),
    ("Describe a rainy day in a small town.", ["umbrella", "streets", "puddles"]),
    ("Explain how the Moon affects tides.", ["gravity", "ocean", "moon"]),
    ("Write a short invitation to a birthday party.", ["party", "cake", "friends"]),
    ("Explain how to stay safe when hiking.", ["map", "water", "weather"]),
    ("Describe what a library offers to a community.", ["books", "quiet", "learning"]),
    ("Explain why recycling helps the environment.", ["waste", "plastic", "energy"]),
]

OPENERS = ["My answer is", "Here is the answer", "In short", "Good question", "To begin"]
CLOSERS = ["Is there anything else I can help with?", "That is all.", "Hope this helps.", "The end."]


def instruction(kind: str, rng: random.Random, keywords: list[str]) -> tuple[str, dict]:
    """One instruction sentence and the constraint that checks it.

    One flat branch per constraint kind (longer than 60 lines): the table of kinds reads best in
    one place, next to the checks' own table in `checks.py`.
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


PRIMARY = [
    "lowercase",
    "uppercase",
    "include_keywords",
    "forbidden_words",
    "keyword_frequency",
    "start_with",
    "end_with",
    "bullet_count",
    "json_format",
    "max_words",
    "min_words",
    "max_sentences",
    "no_commas",
    "sections",
    "paragraphs",
    "quotation",
    "title",
    "placeholders",
    "postscript",
]
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


def build(n: int = N_PROMPTS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task, keywords = TOPICS[i % len(TOPICS)]
        primary = PRIMARY[i % len(PRIMARY)]
        texts, constraints = [], []
        text, c = instruction(primary, rng, keywords)
        texts.append(text)
        constraints.append(c)
        allowed = [s for s in SECONDARY if s not in CONFLICTS.get(primary, set())]
        if i % 3 == 0 and allowed:  # every third prompt carries a second instruction
            text, c = instruction(rng.choice(allowed), rng, keywords)
            texts.append(text)
            constraints.append(c)
        rows.append({"id": f"ifeval-{i:04d}", "prompt": " ".join([task, *texts]), "constraints": constraints})
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = p.parse_args(argv)
    text = render(build())
    if args.check:
        same = SUITE_PATH.exists() and SUITE_PATH.read_text() == text
        print("suite is up to date" if same else f"{SUITE_PATH} differs from the generator; re-run without --check")
        return 0 if same else 1
    SUITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUITE_PATH.write_text(text)
    print(f"wrote {len(text.splitlines())} prompts to {SUITE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
