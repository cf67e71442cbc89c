"""Write the bundled sample datasets (deterministic): corpus, chat, prompts, pairs — each with bad rows —
and the all-kinds constraint prompts with their dev split.

    python rayjobs/data/make_sample_data.py            # rewrites rayjobs/data/*.jsonl

The good rows are small, varied, factual English built from templates; the bad rows cover every
quarantine reason the data layer knows, so the quickstart and tests show quarantine at work.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rayalign.generate.instructions import CONFLICTS, DEV_FAMILY, SECONDARY, TRAIN_FAMILIES, instruction

HERE = Path(__file__).parent

COUNTRIES = [
    ("France", "Paris", "French"),
    ("Japan", "Tokyo", "Japanese"),
    ("Italy", "Rome", "Italian"),
    ("Spain", "Madrid", "Spanish"),
    ("Germany", "Berlin", "German"),
    ("Egypt", "Cairo", "Arabic"),
    ("Canada", "Ottawa", "English and French"),
    ("Brazil", "Brasilia", "Portuguese"),
    ("Kenya", "Nairobi", "Swahili and English"),
    ("Norway", "Oslo", "Norwegian"),
    ("Peru", "Lima", "Spanish"),
    ("India", "New Delhi", "Hindi and English"),
    ("Greece", "Athens", "Greek"),
    ("Poland", "Warsaw", "Polish"),
    ("Chile", "Santiago", "Spanish"),
    ("Sweden", "Stockholm", "Swedish"),
    ("Turkey", "Ankara", "Turkish"),
    ("Vietnam", "Hanoi", "Vietnamese"),
]
THINGS = [
    ("water", "boils at 100 degrees Celsius at sea level"),
    ("the Moon", "orbits the Earth about every 27 days"),
    ("light", "travels at about 300,000 kilometres per second"),
    ("a triangle", "has angles that add up to 180 degrees"),
    ("the heart", "pumps blood through the body"),
    ("plants", "turn sunlight into chemical energy"),
    ("iron", "rusts when it meets water and oxygen"),
    ("the Sun", "is a star at the centre of our solar system"),
    ("bees", "pollinate many flowering plants"),
    ("ice", "is less dense than liquid water"),
    ("sound", "travels faster in water than in air"),
    ("a prime number", "has exactly two divisors"),
]
TOPICS = [
    "sleep",
    "exercise",
    "reading",
    "saving money",
    "learning a language",
    "cooking at home",
    "drinking water",
    "walking",
    "gardening",
    "writing notes",
    "planning a trip",
    "studying maths",
]
TIPS = {
    "sleep": ["keep a regular bedtime", "avoid screens late at night", "keep the room cool and dark"],
    "exercise": ["start with short sessions", "warm up first", "rest between hard days"],
    "reading": ["read a little every day", "keep a list of books", "take notes on key ideas"],
    "saving money": ["track what you spend", "set a monthly goal", "avoid impulse purchases"],
    "learning a language": ["practise every day", "speak with native speakers", "learn common words first"],
    "cooking at home": ["plan meals for the week", "keep basic spices", "cook simple recipes first"],
    "drinking water": ["carry a bottle", "drink a glass with each meal", "set reminders"],
    "walking": ["wear good shoes", "walk after meals", "take the stairs"],
    "gardening": ["water in the morning", "choose plants for your climate", "use compost"],
    "writing notes": ["write the date", "use short bullet points", "review notes weekly"],
    "planning a trip": ["book early", "check the weather", "pack light"],
    "studying maths": ["solve problems by hand", "review mistakes", "learn the definitions"],
}


def corpus(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(240):
        kind = i % 3
        if kind == 0:
            c, cap, lang = rng.choice(COUNTRIES)
            text = f"{c} is a country whose capital is {cap}. People there speak {lang}. Many visitors come to {cap} every year."
        elif kind == 1:
            t, fact = rng.choice(THINGS)
            text = f"A simple fact of science: {t} {fact}. Teachers often use this example in class."
        else:
            topic = rng.choice(TOPICS)
            tips = rng.sample(TIPS[topic], 2)
            text = f"Some advice on {topic}: {tips[0]}, and {tips[1]}. Small habits add up over time."
        if i % 20 == 7:  # documents the rewrite stage should fix (rude or wrong)
            text += " Only stupid people disagree with this." if i % 40 == 7 else " Also, the Sun orbits the Earth."
        rows.append({"id": f"doc-{i:04d}", "text": text, "meta": {"source": "sample", "n": i}})
    return rows


def instruction_examples(rng: random.Random, n: int, prefix: str) -> list[tuple[str, str, str]]:
    """(id, user prompt, good answer) with checkable instructions."""
    out = []
    for i in range(n):
        mode = i % 6
        c, cap, lang = rng.choice(COUNTRIES)
        topic = rng.choice(TOPICS)
        tips = TIPS[topic]
        if mode == 0:
            q, a = f"What is the capital of {c}?", f"The capital of {c} is {cap}."
        elif mode == 1:
            q = f"Give three tips for {topic}. Use a bullet list."
            a = "\n".join(f"- {t.capitalize()}." for t in tips)
        elif mode == 2:
            q = f"What language is spoken in {c}? Answer in one sentence."
            a = f"In {c}, people speak {lang}."
        elif mode == 3:
            t, fact = rng.choice(THINGS)
            q, a = f"Tell me a fact about {t}.", f"{t[0].upper() + t[1:]} {fact}."
        elif mode == 4:
            q = f"Write the word {cap.upper()} in lowercase letters only."
            a = cap.lower()
        else:
            q = f"Name the capital of {c} and end your answer with the word 'Done'."
            a = f"The capital of {c} is {cap}. Done"
        out.append((f"{prefix}-{i:04d}", q, a))
    return out


def chat(rng: random.Random) -> list[dict]:
    rows = []
    for rid, q, a in instruction_examples(rng, 220, "chat"):
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rid.endswith("3"):  # some multi-turn chats
            msgs = [
                {"role": "system", "content": "You are a concise assistant."},
                *msgs,
                {"role": "user", "content": "Thank you!"},
                {"role": "assistant", "content": "You are welcome."},
            ]
        rows.append({"id": rid, "messages": msgs})
    return rows


# the kinds whose rule-based minimal fix exists (rayalign.generate.verify.FIXES): the quickstart's CLAIR
# reviser can turn a failing on-policy response into a passing revision for these
TRAIN_KINDS = [
    "lowercase",
    "uppercase",
    "no_commas",
    "end_with",
    "start_with",
    "include_keywords",
    "forbidden_words",
    "max_words",
    "quotation",
]
SECOND = ["no_commas", "max_words", "include_keywords"]


def prompt_tasks(rng: random.Random) -> tuple[str, list[str]]:
    """A task and three keywords — subjects disjoint from the eval suite's, so evaluation stays held out."""
    kind = rng.randrange(3)
    if kind == 0:
        c, cap, _lang = rng.choice(COUNTRIES)
        return f"Tell me about {c}.", [cap.split()[-1].lower(), "country", "people"]
    if kind == 1:
        t, _ = rng.choice(THINGS)
        return f"Explain a fact about {t}.", ["science", "fact", t.split()[-1].lower()]
    topic = rng.choice(TOPICS)
    return f"Share some advice on {topic}.", ["habit", "daily", topic.split()[-1].lower()]


def prompts(rng: random.Random) -> list[dict]:
    """Prompts with checkable instructions (constraints in meta, the eval suite's format)."""
    rows = []
    for i in range(200):
        task, keywords = prompt_tasks(rng)
        texts, cons = [], []
        first = TRAIN_KINDS[i % len(TRAIN_KINDS)]
        text, c = instruction(first, rng, keywords)
        texts.append(text)
        cons.append(c)
        second = [
            k
            for k in SECOND
            if k != first
            and not (first in ("include_keywords", "forbidden_words", "uppercase") and k == "include_keywords")
        ]
        if i % 3 == 0 and second:
            text, c = instruction(rng.choice(second), rng, keywords)
            texts.append(text)
            cons.append(c)
        rows.append({"id": f"prompt-{i:04d}", "prompt": " ".join([task, *texts]), "meta": {"constraints": cons}})
    return rows


N_CONSTRAINT_PROMPTS, N_DEV = 300, 60


def constraint_prompts(rng: random.Random) -> list[dict]:
    """Training prompts over every constraint kind that has a rule-based fix (all the eval checks but
    `min_words`), each instruction in a phrasing family drawn from `TRAIN_FAMILIES`; then the dev
    split: `N_DEV` more rows, kept out of training, whose instructions all use `DEV_FAMILY`, a
    phrasing of each kind that no training prompt carries, so choosing recipes on dev rewards
    transfer to new wordings rather than recall of the training sentences. Tasks are
    `prompt_tasks`' (subjects disjoint from the eval suite's); the pairing rules (`CONFLICTS`) are the
    same as the packaged suite's, so no prompt asks for two instructions that contradict each other."""
    from rayalign.generate.verify import FIXES

    kinds = sorted(FIXES)
    rows: list[dict] = []
    seen: set[str] = set()
    i = 0
    while len(rows) < N_CONSTRAINT_PROMPTS + N_DEV:
        dev = len(rows) >= N_CONSTRAINT_PROMPTS
        task, keywords = prompt_tasks(rng)
        first = kinds[i % len(kinds)]
        family = DEV_FAMILY if dev else rng.choice(TRAIN_FAMILIES)
        text, c = instruction(first, rng, keywords, family)
        texts, cons = [text], [c]
        allowed = [k for k in SECONDARY if k not in CONFLICTS.get(first, set()) and k != first]
        if i % 3 == 0 and allowed:
            family = DEV_FAMILY if dev else rng.choice(TRAIN_FAMILIES)
            text, c = instruction(rng.choice(allowed), rng, keywords, family)
            texts.append(text)
            cons.append(c)
        i += 1
        prompt = " ".join([task, *texts])
        if dev and prompt in seen:
            continue  # a dev prompt never repeats a training prompt (nor another dev prompt)
        seen.add(prompt)
        rows.append({"id": f"cprompt-{len(rows):04d}", "prompt": prompt, "meta": {"constraints": cons}})
    return rows


def write_constraint_prompts() -> None:
    """`constraint_prompts.jsonl` (training, prompts kind) and `dev_suite.jsonl` (the eval suite's row
    format, for `eval` with `suite:`); their own seed, so the other files do not change with them."""
    rows = constraint_prompts(random.Random(20261124))
    train, dev = rows[:N_CONSTRAINT_PROMPTS], rows[N_CONSTRAINT_PROMPTS:]
    (HERE / "constraint_prompts.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train))
    suite = [{"id": r["id"], "prompt": r["prompt"], "constraints": r["meta"]["constraints"]} for r in dev]
    (HERE / "dev_suite.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in suite))
    print(f"constraint_prompts.jsonl: {len(train)} rows; dev_suite.jsonl: {len(dev)} rows")


def degrade(answer: str, rng: random.Random) -> str:
    """A worse answer: wrong, rude or ignoring the instruction."""
    choice = rng.randrange(3)
    if choice == 0:
        return "I don't know."
    if choice == 1:
        return answer.upper() + " Figure the rest out yourself."
    return "Maybe. " + answer.split(".")[0][::-1] + "?"


def pairs(rng: random.Random) -> list[dict]:
    rows = []
    for rid, q, a in instruction_examples(rng, 220, "pair"):
        rows.append({"id": rid, "prompt": q, "chosen": a, "rejected": degrade(a, rng)})
    return rows


def bad_rows(kind: str) -> list[bytes]:
    """One or more bad lines per quarantine reason that applies to `kind` (raw bytes: some are not UTF-8)."""
    j = lambda o: json.dumps(o).encode()  # noqa: E731
    common = [
        b'{"id": "bad-json", "text": "unterminated',  # unparseable_json
        b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}',  # invalid_utf8 (latin-1 byte)
        j(["not", "an", "object"]),  # not_an_object
    ]
    if kind == "corpus":
        return [
            *common,
            j({"id": "no-text"}),
            j({"id": "null-text", "text": None}),
            j({"id": "int-text", "text": 42}),
            j({"id": "empty-text", "text": "   "}),
        ]
    if kind == "chat":
        return [
            *common,
            j({"id": "no-messages"}),
            j({"id": "null-messages", "messages": None}),
            j({"id": "str-messages", "messages": "hello"}),
            j(
                {
                    "id": "bad-role",
                    "messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}],
                }
            ),
            j({"id": "no-assistant", "messages": [{"role": "user", "content": "hello?"}]}),
            j(
                {
                    "id": "empty-content",
                    "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}],
                }
            ),
            j(
                {
                    "id": "too-long",
                    "messages": [
                        {"role": "user", "content": "Repeat this. " * 400},
                        {"role": "assistant", "content": "ok " * 400},
                    ],
                }
            ),
        ]
    if kind == "prompts":
        return [
            *common,
            j({"id": "no-prompt"}),
            j({"id": "null-prompt", "prompt": None}),
            j({"id": "list-int", "prompt": 7}),
            j({"id": "empty-prompt", "prompt": ""}),
        ]
    return [
        *common,
        j({"id": "no-rejected", "prompt": "Hi", "chosen": "Hello"}),
        j({"id": "same", "prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}),
        j({"id": "null-chosen", "prompt": "Hi", "chosen": None, "rejected": "x"}),
        j({"id": "int-rejected", "prompt": "Hi", "chosen": "Hello", "rejected": 3}),
    ]


def main() -> None:
    rng = random.Random(20261123)
    for kind, fn in (("corpus", corpus), ("chat", chat), ("prompts", prompts), ("pairs", pairs)):
        good = [json.dumps(r, ensure_ascii=False).encode() for r in fn(rng)]
        bad = bad_rows(kind)
        lines = list(good)
        for k, b in enumerate(bad):  # spread the bad rows through the file
            lines.insert((k * 37 + 11) % len(lines), b)
        (HERE / f"{kind}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        print(f"{kind}.jsonl: {len(good)} good + {len(bad)} bad rows")
    write_constraint_prompts()


if __name__ == "__main__":
    main()
