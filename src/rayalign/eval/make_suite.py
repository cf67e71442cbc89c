"""Generate the project's verifiable instruction-following suite (`suite/ifeval.jsonl`).

    python -m rayalign.eval.make_suite            # rewrites src/rayalign/eval/suite/ifeval.jsonl
    python -m rayalign.eval.make_suite --check    # exit 1 if the committed file differs

Every prompt is a task (from TOPICS) plus one or two instructions whose compliance the code in
`rayalign/checks.py` verifies, in the training templates' phrasings (`rayalign.generate.instructions`):
scores on this suite are trained-template performance; `heldout.py` writes the independent suite. The output is deterministic (a seeded RNG), so the committed file and this
script always agree (a test regenerates it and compares). Rows: {id, prompt, constraints: [...]}.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from rayalign.generate.instructions import CONFLICTS, SECONDARY, instruction

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


def write_or_check(path: Path, text: str, argv: list[str] | None, description: str) -> int:
    """A generated suite's command line: write `text` to `path`, or with --check compare (exit 1 if stale)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = p.parse_args(argv)
    if args.check:
        same = path.exists() and path.read_text() == text
        print(f"{path.name} is up to date" if same else f"{path} differs from the generator; re-run without --check")
        return 0 if same else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {len(text.splitlines())} prompts to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return write_or_check(SUITE_PATH, render(build()), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
