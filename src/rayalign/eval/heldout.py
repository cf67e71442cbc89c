"""Generate the independent held-out suite (`suite/heldout.jsonl`): instructions the training side never saw.

    python -m rayalign.eval.heldout            # rewrites src/rayalign/eval/suite/heldout.jsonl
    python -m rayalign.eval.heldout --check    # exit 1 if the committed file differs

Written apart from the training prompts' generator (`rayjobs/data/make_sample_data.py`, which keeps
its own templates and may not import this package's generators) and from the packaged `ifeval`
suite, whose phrasings are the training templates:

- its own tasks (subjects that neither the training prompts nor the `ifeval` suite use);
- several paraphrase families per constraint kind (an RNG picks one per instruction), none sharing
  a run of five words with any training or dev prompt (a test checks the n-gram overlap);
- every trained kind ("seen kinds") in new words, plus the kinds no training data, reviser or
  reward targets (`rayalign.checks.HELDOUT_KINDS`: "unseen kinds").

Rows: {id, prompt, constraints: [...]}, the suite format `rayalign eval` reads (`suite: heldout`).
The held-out suite is for the final report: choose recipes on the dev split
(`rayjobs/data/dev_suite.jsonl`); the eval stage counts how often this suite was scored.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

from rayalign.checks import CHECKS, HELDOUT_KINDS
from rayalign.eval.make_suite import render, write_or_check

SUITE_PATH = Path(__file__).parent / "suite" / "heldout.jsonl"
SEED = 7_2026_12
N_PROMPTS = 138  # 23 kinds × 6 prompts carrying each as their main instruction

# (task, three words about it)
TASKS: list[tuple[str, list[str]]] = [
    ("Tell me how a refrigerator keeps food cold.", ["compressor", "coolant", "door"]),
    ("What does a lighthouse do?", ["beam", "ships", "coast"]),
    ("How does a volcano erupt?", ["magma", "pressure", "ash"]),
    ("Suggest ways to calm down before a big exam.", ["breathing", "sleep", "notes"]),
    ("Why do leaves change colour in autumn?", ["chlorophyll", "pigments", "autumn"]),
    ("How should a beginner care for a houseplant?", ["pot", "drainage", "window"]),
    ("What makes a good team captain?", ["trust", "listening", "example"]),
    ("How do airplanes stay in the air?", ["wings", "lift", "engines"]),
    ("Say something about the history of the printing press.", ["Gutenberg", "ink", "books"]),
    ("How can a family cut its electricity bill?", ["lights", "heating", "appliances"]),
    ("What is a rainbow and when can you see one?", ["droplets", "colours", "sun"]),
    ("How do you set up a small aquarium?", ["filter", "gravel", "fish"]),
    ("What should someone pack for a weekend of camping?", ["tent", "torch", "stove"]),
    ("How do earthquakes happen?", ["plates", "faults", "shaking"]),
    ("Why do cats purr?", ["vibration", "comfort", "kitten"]),
    ("How does a compass find north?", ["needle", "magnetic", "pole"]),
    ("What does a good first day at a new job look like?", ["colleagues", "desk", "lunch"]),
    ("How is cheese made?", ["milk", "curds", "aging"]),
    ("What are the benefits of learning to swim?", ["pool", "safety", "strokes"]),
    ("How do solar panels make electricity?", ["cells", "photons", "roof"]),
    ("How does one prepare for a long bicycle tour?", ["route", "tyres", "snacks"]),
    ("What do firefighters do during a typical shift?", ["station", "hoses", "drills"]),
    ("How do submarines dive and surface?", ["ballast", "hull", "depth"]),
]

OPENINGS = ["Sure thing", "Let me explain", "Quick take", "Here goes"]
ENDINGS = ["Thanks for asking.", "End of answer.", "Over to you.", "That covers it."]

Family = Callable[..., str]


def _families(kind: str) -> list[Family]:
    """Paraphrase families of one kind: each renders the instruction from the constraint's params."""
    table: dict[str, list[Family]] = {
        "lowercase": [
            lambda: "Please avoid capitals entirely and type every letter in small case.",
            lambda: "No uppercase characters should appear; use only small letters throughout.",
            lambda: "Write the whole reply without a single capital letter.",
        ],
        "uppercase": [
            lambda: "Type the full reply in ALL CAPS.",
            lambda: "Every letter of the reply has to be a capital.",
            lambda: "Shout it: put each word entirely in capitals.",
        ],
        "include_keywords": [
            lambda keywords: f"Make sure the words “{keywords[0]}” and “{keywords[1]}” both show up.",
            lambda keywords: f"Mention {keywords[0]} as well as {keywords[1]} somewhere in the reply.",
            lambda keywords: f"Work the terms {keywords[0]} and {keywords[1]} into what you say.",
        ],
        "forbidden_words": [
            lambda words: f"Steer clear of the terms {words[0]} and {words[1]}.",
            lambda words: f"Neither “{words[0]}” nor “{words[1]}” may be used.",
            lambda words: f"Avoid saying {words[0]} or {words[1]} at all.",
        ],
        "keyword_frequency": [
            lambda keyword, min: f"Mention {keyword} no fewer than {min} times.",
            lambda keyword, min: f"The term “{keyword}” needs to come up {min} or more times.",
            lambda keyword, min: f"Repeat the word {keyword} on {min} separate occasions or more.",
        ],
        "start_with": [
            lambda phrase: f"Open with these words: {phrase}.",
            lambda phrase: f"The very first words must be “{phrase}”.",
            lambda phrase: f"Kick things off by writing {phrase} before anything else.",
        ],
        "end_with": [
            lambda phrase: f"Close with exactly this: {phrase}",
            lambda phrase: f"The final words must be “{phrase}” with nothing following.",
            lambda phrase: f"Sign off using the line {phrase}",
        ],
        "bullet_count": [
            lambda count: f"Give {count} markdown list items (lines beginning with a dash), no more and no fewer.",
            lambda count: f"Format it as a list of precisely {count} dash-led points.",
            lambda count: f"Lay out {count} points, each on a line that starts with '- '.",
        ],
        "json_format": [
            lambda: "Reply with valid JSON and nothing besides it.",
            lambda: "Return a machine-readable JSON object as the full reply.",
            lambda: "Format everything as a JSON document that a parser accepts.",
        ],
        "max_words": [
            lambda max: f"Keep it short: {max} words or fewer.",
            lambda max: f"Stay within a limit of {max} words.",
            lambda max: f"Use no more than {max} words.",
        ],
        "min_words": [
            lambda min: f"The reply should run to {min} words or longer.",
            lambda min: f"Go into detail, using no fewer than {min} words.",
            lambda min: f"Make it a full reply of {min}+ words.",
        ],
        "max_sentences": [
            lambda max: f"Limit yourself to {max} {'sentence' if max == 1 else 'sentences'} or fewer.",
            lambda max: f"No more than {max} full {'sentence' if max == 1 else 'sentences'}, please.",
            lambda max: f"Keep the reply to a maximum of {max} {'sentence' if max == 1 else 'sentences'}.",
        ],
        "no_commas": [
            lambda: "The comma character is not allowed.",
            lambda: "Leave out every comma.",
            lambda: "Punctuate without a single comma.",
        ],
        "sections": [
            lambda count, marker: f"Organise the reply into {count} parts headed {marker} 1, {marker} 2 and so on.",
            lambda count, marker: f"Use {count} headings of the form '{marker} N' to divide the reply.",
            lambda count, marker: f"Break it into {count} numbered parts, each labelled like {marker} 1.",
        ],
        "paragraphs": [
            lambda count: f"Use {count} blocks of text with an empty line between each.",
            lambda count: f"Lay the reply out as {count} separate paragraphs divided by blank lines.",
            lambda count: f"Give precisely {count} paragraphs; put a blank line between neighbouring ones.",
        ],
        "quotation": [
            lambda: "Put the reply inside a pair of double quotes, one at the start and one at the end.",
            lambda: "Enclose everything you say in double quote marks.",
            lambda: 'Begin and end the reply with the " character.',
        ],
        "title": [
            lambda: "Start with a heading placed between << and >>, like <<A Heading>>.",
            lambda: "Give the piece a name enclosed in double angle brackets, e.g. <<Name Here>>.",
            lambda: "Add a headline surrounded by << and >>.",
        ],
        "placeholders": [
            lambda min: f"Leave {min} or more blanks for the reader in square brackets, e.g. [city].",
            lambda min: f"Put a minimum of {min} fill-in field(s) like [your name] in the reply.",
            lambda min: f"Use {min}+ bracketed slots such as [company] that someone could fill in later.",
        ],
        "postscript": [
            lambda marker: (
                f"After the main reply add a note on its own line that begins with {marker} (those letters)."
            ),
            lambda marker: f"Finish with an afterthought on a new line introduced by {marker} (those letters).",
            lambda marker: f"Tack on a closing {marker} note.",
        ],
        "highlights": [
            lambda min: f"Emphasise {min} or more phrases with single asterisks, as in *this*.",
            lambda min: f"Mark no fewer than {min} key phrases in markdown italics like *key idea*.",
            lambda min: f"Highlight {min}+ parts by surrounding them with one asterisk on each side.",
        ],
        "numbered_items": [
            lambda count: f"Answer as a numbered list of precisely {count} entries (1., 2., ...).",
            lambda count: f"Give {count} steps numbered 1. 2. and so on, no more and no fewer.",
            lambda count: f"Write {count} numbered lines, each opening with its number and a dot.",
        ],
        "ends_with_question": [
            lambda: "Finish by asking the reader a question.",
            lambda: "The last sentence must be a question ending in a question mark.",
            lambda: "Wrap up with a question of your own.",
        ],
        "two_responses": [
            lambda separator: f"Offer two different replies, divided by a line holding only {separator}.",
            lambda separator: f"Write two alternative versions and put a line of {separator} between them.",
            lambda separator: f"Give a pair of distinct answers separated by the line {separator}.",
        ],
    }
    return table[kind]


def _params(kind: str, rng: random.Random, words: list[str]) -> dict:
    """The constraint's parameters (values of this generator's own choosing)."""
    if kind == "include_keywords":
        return {"keywords": rng.sample(words, 2)}
    if kind == "forbidden_words":
        return {"words": rng.sample(words, 2)}
    if kind == "keyword_frequency":
        return {"keyword": rng.choice(words), "min": rng.choice([2, 3])}
    if kind == "start_with":
        return {"phrase": rng.choice(OPENINGS)}
    if kind == "end_with":
        return {"phrase": rng.choice(ENDINGS)}
    if kind in ("bullet_count", "numbered_items"):
        return {"count": rng.choice([2, 3, 4])}
    if kind == "max_words":
        return {"max": rng.choice([12, 25, 35, 50])}
    if kind == "min_words":
        return {"min": rng.choice([50, 70, 100])}
    if kind == "max_sentences":
        return {"max": rng.choice([1, 2, 3, 4])}
    if kind == "sections":
        return {"count": rng.choice([2, 3, 4]), "marker": rng.choice(["Part", "Section"])}
    if kind == "paragraphs":
        return {"count": rng.choice([2, 3, 4])}
    if kind == "placeholders":
        return {"min": rng.choice([1, 2, 4])}
    if kind == "postscript":
        return {"marker": rng.choice(["P.S.", "P.P.S"])}
    if kind == "highlights":
        return {"min": rng.choice([1, 2, 3])}
    if kind == "two_responses":
        return {"separator": "******"}
    return {}


def instruction(kind: str, rng: random.Random, words: list[str]) -> tuple[str, dict]:
    """One held-out instruction (a paraphrase family picked by `rng`) and the constraint checking it."""
    params = _params(kind, rng, words)
    family = rng.choice(_families(kind))
    return family(**params), {"kind": kind, **params}


SEEN = [k for k in CHECKS if k not in HELDOUT_KINDS]  # the kinds training targets, in new words
KINDS = SEEN + list(HELDOUT_KINDS)
EXTRA = ["no_commas", "include_keywords", "forbidden_words", "max_words", "ends_with_question"]
# main kind -> extras that would contradict it or leave no room (JSON needs commas, lists need words)
CLASHES: dict[str, set[str]] = {
    "json_format": set(EXTRA),
    "quotation": {"ends_with_question"},
    "end_with": {"ends_with_question"},
    "postscript": {"ends_with_question", "max_words"},
    "two_responses": {"ends_with_question", "max_words"},
    "uppercase": {"include_keywords"},
    "lowercase": set(),
    "keyword_frequency": {"include_keywords", "forbidden_words", "max_words"},
    "include_keywords": {"include_keywords", "forbidden_words"},
    "forbidden_words": {"include_keywords", "forbidden_words"},
    "min_words": {"max_words"},
    "max_words": {"max_words"},
    "no_commas": {"no_commas"},
    "ends_with_question": {"ends_with_question"},
    "max_sentences": {"max_words"},
    "sections": {"max_words"},
    "paragraphs": {"max_words"},
    "bullet_count": {"max_words"},
    "numbered_items": {"max_words"},
    "placeholders": {"max_words"},
    "highlights": {"max_words"},
}


def build(n: int = N_PROMPTS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task, words = TASKS[i % len(TASKS)]
        main = KINDS[i % len(KINDS)]
        text, c = instruction(main, rng, words)
        texts, constraints = [text], [c]
        extras = [k for k in EXTRA if k not in CLASHES.get(main, set())]
        if i % 3 == 1 and extras:  # every third prompt carries a second instruction
            text, c = instruction(rng.choice(extras), rng, words)
            texts.append(text)
            constraints.append(c)
        rows.append({"id": f"heldout-{i:04d}", "prompt": " ".join([task, *texts]), "constraints": constraints})
    return rows


def instruction_texts(rows: list[dict], tasks: list[tuple[str, list[str]]] = TASKS) -> list[str]:
    """Each row's prompt without its task sentence: the instruction text only."""
    out = []
    for r in rows:
        task = next(t for t, _ in tasks if r["prompt"].startswith(t))
        out.append(r["prompt"][len(task) :].strip())
    return out


def main(argv: list[str] | None = None) -> int:
    return write_or_check(SUITE_PATH, render(build()), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
