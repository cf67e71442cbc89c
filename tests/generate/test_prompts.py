"""Pure parts of the generation stages: templates (snapshots), reply parsers fed malformed output,
contrast stats worked by hand, verifier checks and rule fixes, status decisions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rayalign.generate import verify
from rayalign.generate.clair import decide, read_input
from rayalign.generate.contrast import contrast_stats, edit_distance, normalised_edit_distance, token_jaccard
from rayalign.generate.judge import combine
from rayalign.generate.pas_rules import augment, rule_check, script_of
from rayalign.generate.prompts import (
    TEMPLATES,
    parse_hint,
    parse_judgement,
    parse_revision,
    parse_rewrite,
    parse_verdict,
    render,
    template_version,
)
from rayalign.generate.rewrite import judge_rewrite

SNAP = Path(__file__).parent / "snapshots"
VALUES = {
    "rewrite": dict(document="Water boils at 50 degrees. {braces} and $x$ stay."),
    "pas_hint": dict(prompt="How do I bake bread?", max_words="30"),
    "pas_critique": dict(prompt="How do I bake bread?", hint="Cover ingredients, proofing time and oven temperature."),
    "clair_revise": dict(prompt="What is 2+2?", response="2+2 is 5."),
    "judge": dict(prompt="What is 2+2?", response_a="4", response_b="5"),
    "judge_rating": dict(prompt="What is 2+2?", response="4"),
}


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_snapshot(name):
    """Rendered prompts are compared with files under snapshots/ (UPDATE_SNAPSHOTS=1 rewrites them)."""
    text = render(name, **VALUES[name])
    path = SNAP / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text()
    assert "$" not in text.replace("$x$", "")  # every placeholder was filled
    assert template_version(name).startswith(f"{name}@") and len(template_version(name)) == len(name) + 9


def test_render_missing_value_raises():
    with pytest.raises(KeyError):
        render("judge", prompt="p", response_a="a")


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("[UNCHANGED]", (None, "unchanged")),
        ("  unchanged. ", (None, "unchanged")),
        ("", (None, "empty")),
        ("Here is the rewritten document:\nWater boils at 100 °C.", ("Water boils at 100 °C.", "ok")),
        ("Rewritten document: Water boils.", ("Water boils.", "ok")),
        ("Sure:\n\n", (None, "empty")),
    ],
)
def test_parse_rewrite(raw, expected):
    assert parse_rewrite(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Hint: mention flour, water, yeast.", ("mention flour, water, yeast.", "ok")),
        ('hint:   "Give the oven temperature."\nextra chatter', ('"Give the oven temperature."'.strip('"'), "ok")),
        ("Cover proofing time.", ("Cover proofing time.", "ok")),
        ("first line\nsecond line", (None, "unparseable")),
        ("   ", (None, "empty")),
        ("Hint:", (None, "unparseable")),
        (None, (None, "empty")),
    ],
)
def test_parse_hint(raw, expected):
    assert parse_hint(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("VERDICT: ACCEPT", (True, "ok")),
        ("verdict - reject - it answers the prompt", (False, "ok")),
        ("**Verdict:** **Reject**", (False, "ok")),
        ("Accept.", (True, "ok")),
        ("I think the hint is fine", (None, "unparseable")),
        ("", (None, "unparseable")),
    ],
)
def test_parse_verdict(raw, expected):
    assert parse_verdict(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Better: A", ("A", "ok")),
        ("better response: (b)", ("B", "ok")),
        ("[[A]]", ("A", "ok")),
        ("B", ("B", "ok")),
        ("Better: A. Actually Better: B", (None, "ambiguous")),
        ("Both are good.", (None, "unparseable")),
        ("", (None, "unparseable")),
    ],
)
def test_parse_judgement(raw, expected):
    assert parse_judgement(raw) == expected


def test_parse_revision_malformed():
    assert parse_revision("") == (None, "empty")
    assert parse_revision("Here's the revised response:\n") == (None, "empty")
    assert parse_revision("Revised response: 2+2 is 4.") == ("2+2 is 4.", "ok")


def test_contrast_stats_by_hand():
    """'the cat sat' vs 'the dog sat': sets {the,cat,sat} / {the,dog,sat} → |∩|=2, |∪|=4 → 0.5;
    token edit distance 1 (one substitution) / 3 tokens → 1/3."""
    assert token_jaccard("the cat sat", "the dog sat") == 0.5
    assert normalised_edit_distance("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert edit_distance(list("kitten"), list("sitting")) == 3  # the textbook example
    assert contrast_stats("", "") == {"jaccard": 1.0, "edit_distance": 0.0}
    assert contrast_stats("a b", "c d") == {"jaccard": 0.0, "edit_distance": 1.0}


def test_verify_uses_eval_checks_and_rule_fix():
    meta = {"constraints": [{"kind": "lowercase"}, {"kind": "end_with", "phrase": "Done"}, {"kind": "no_commas"}]}
    assert not verify.check(meta, "Rome, Italy.")
    # the fixes interact (appending "Done" breaks lowercase): repeated passes reach a fixed point
    assert verify.rule_fix(meta, "Rome, Italy.") == "rome italy. done"
    assert verify.check('{"constraints": [{"kind": "max_words", "max": 2}]}', "one two")  # meta as JSON text
    assert verify.rule_fix({"constraints": [{"kind": "max_words", "max": 2}]}, "one two three.") == "one two"
    assert verify.rule_fix({"constraints": [{"kind": "min_words", "min": 5}]}, "too short") is None  # no honest fix
    assert verify.check({}, "anything") and not verify.checkable("{}") and not verify.checkable("not json")


@pytest.mark.parametrize(
    ("constraint", "response", "fixed"),
    [
        # sentences regrouped in order into the asked number of bullets / sections / paragraphs
        (
            {"kind": "bullet_count", "count": 3},
            "Sleep helps. It lifts mood. Rest. Bye.",
            "- Sleep helps. It lifts mood.\n- Rest.\n- Bye.",
        ),
        ({"kind": "bullet_count", "count": 2}, "- a b\n- c d\n- e f", "- a b c d\n- e f"),  # lines are units too
        (
            {"kind": "sections", "count": 2},
            "One here. Two here. Three.",
            "Section 1\nOne here. Two here.\n\nSection 2\nThree.",
        ),
        ({"kind": "paragraphs", "count": 3}, "One. Two. Three. Four.", "One. Two.\n\nThree.\n\nFour."),
        ({"kind": "paragraphs", "count": 2}, "no stops here", "no stops\n\nhere"),  # fewer sentences: words
        ({"kind": "max_sentences", "max": 2}, "A b. C d! E f? G", "A b. C d!"),
        # natural text: a title from the first words (no dangling "for"), placeholders in a sentence
        # (new names, no "[name] [place]" dump), JSON fields carrying the sentences (no
        # {"response": ...} wrapper), keywords woven into distinct sentences (no "sleep sleep")
        ({"kind": "title"}, "tea is a drink for the morning.", "<<Tea Is A Drink>>\ntea is a drink for the morning."),
        (
            {"kind": "placeholders", "min": 3},
            "Dear [name], hi.",
            "Dear [name], hi. Fill in [place] and [date] before you send it.",
        ),
        ({"kind": "postscript"}, "Hello.", "Hello.\n\nP.S. Thank you for reading."),
        (
            {"kind": "json_format"},
            'He said "hi". Then he left',
            '{"summary": "He said \\"hi\\".", "points": ["Then he left"]}',
        ),
        ({"kind": "json_format"}, "Paris.", '{"answer": "Paris."}'),
        (
            {"kind": "keyword_frequency", "keyword": "sleep", "min": 3},
            "Sleep well",
            "Sleep well. In short it comes down to sleep. Keep sleep in mind.",
        ),
        (
            {"kind": "include_keywords", "keywords": ["ash", "magma", "pressure"]},
            "Magma rises",
            "Magma rises. This also touches on ash and pressure.",
        ),
        ({"kind": "start_with", "phrase": "My answer is"}, "Paris.", "My answer is: Paris."),
        ({"kind": "start_with", "phrase": "Answer:"}, "Paris.", "Answer: Paris."),
        # a word budget cuts at the last sentence end that fits, words only when none does
        ({"kind": "max_words", "max": 6}, "Paris is big. It is old and lovely.", "Paris is big."),
        ({"kind": "max_words", "max": 2}, "Paris is big. It is old.", "Paris is"),
    ],
)
def test_rule_fix_layout_and_marker_kinds(constraint, response, fixed):
    meta = {"constraints": [constraint]}
    assert not verify.check(meta, response)
    assert verify.rule_fix(meta, response) == fixed
    assert verify.check(meta, fixed)


def test_rule_fix_gives_up_without_material():
    # three paragraphs need three words at least; a fixed point that still fails is None, not a wrong pair
    assert verify.rule_fix({"constraints": [{"kind": "paragraphs", "count": 3}]}, "two words") is None


def test_every_suite_kind_but_min_words_has_a_fix_that_passes():
    """On every eval-suite prompt, a plain two-sentence answer is fixed into one that passes all its
    constraints — except where the prompt asks for min_words (no honest minimal fix)."""
    from rayalign.eval.make_suite import build

    answer = "This is a plain answer with enough words to work with. It has a second sentence here too."
    kinds = {c["kind"] for row in build() for c in row["constraints"]}
    assert sorted(kinds - {"min_words"}) == sorted(verify.FIXES)
    for row in build():
        meta = {"constraints": row["constraints"]}
        fixed = verify.rule_fix(meta, answer)
        if any(c["kind"] == "min_words" for c in row["constraints"]):
            continue
        assert fixed is not None and verify.check(meta, fixed), (row["id"], fixed)


def test_rewrite_statuses():
    orig = "Water boils at 50 degrees at sea level."
    assert judge_rewrite(orig, "", "error", 0.6, 1.8) == ("", "engine_error", 0.0)
    assert judge_rewrite(orig, "[UNCHANGED]", "stop", 0.6, 1.8) == (orig, "unchanged", 1.0)
    assert judge_rewrite(orig, f"  {orig}\n", "stop", 0.6, 1.8)[1] == "unchanged"
    assert judge_rewrite(orig, "Water boils.", "stop", 0.6, 1.8)[1] == "too_short"  # 12/39 chars
    assert judge_rewrite(orig, orig * 3, "stop", 0.6, 1.8)[1] == "too_long"
    assert judge_rewrite(orig, "Water boils at", "length", 0.6, 1.8)[1] == "truncated"
    _text, status, ratio = judge_rewrite(orig, "Water boils at 100 degrees at sea level.", "stop", 0.6, 1.8)
    assert status == "rewritten" and ratio == pytest.approx(40 / 39)


def test_pas_rules():
    assert script_of("How are you?") == "LATIN" and script_of("你好吗") == "CJK" and script_of("123") is None
    assert rule_check("How do I bake bread?", "Mention proofing.", 30) == "ok"
    assert rule_check("How do I bake bread?", "word " * 31, 30) == "too_long"
    assert rule_check("How do I bake bread?", "提到发酵时间", 30) == "language_changed"
    assert rule_check("How do I bake bread?", "how do i bake  bread?", 30) == "echoes_prompt"
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    assert augment(msgs, "H")[2]["content"] == "Q2\n\nH" and msgs[2]["content"] == "Q2"


def test_judge_combine_position_bias():
    assert combine("A", "B", swap=True) == ("A", "judged")  # B in swapped order = A in original order
    assert combine("A", "A", swap=True) == (None, "inconsistent")
    assert combine("B", None, swap=True) == (None, "judge_unparseable")
    assert combine("B", None, swap=False) == ("B", "judged")
    assert combine(None, "A", swap=True) == (None, "judge_unparseable")


def test_clair_decide_and_input():
    assert decide("x", "y", "ok", "stop") == ("y", "revised")
    assert decide("a  b", "a b", "ok", "stop") == (None, "identical")
    assert decide("x", None, "empty", "stop") == (None, "empty")
    assert decide("x", "y", "ok", "length") == (None, "truncated")
    assert decide("x", None, "engine_error", "error") == (None, "engine_error")
    ok = ["ok", "truncated"]
    assert read_input({"id": "1", "prompt": "Q", "response": "A"}, ok)[1] == "ok"
    assert (
        read_input({"id": "1", "prompt": "Q", "response": "A", "status": "engine_error"}, ok)[1] == "input_engine_error"
    )
    assert read_input({"id": "1", "prompt": "Q", "response": " "}, ok)[1] == "input_no_response"
    assert read_input({"id": "1", "response": "A"}, ok)[1] == "input_missing_field"


def test_constraint_prompts_match_their_generator_and_dev_is_held_apart():
    """The bundled all-kinds training prompts and their dev split are what the generator writes; no
    dev prompt is trained on, and no eval-suite prompt or subject occurs in either."""
    import importlib.util
    import json
    import random
    from pathlib import Path

    from rayalign.eval.make_suite import TOPICS, build

    data = Path(__file__).parents[2] / "rayjobs" / "data"
    spec = importlib.util.spec_from_file_location("make_sample_data", data / "make_sample_data.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rows = gen.constraint_prompts(random.Random(20261124))
    train = [json.loads(x) for x in (data / "constraint_prompts.jsonl").read_text().splitlines()]
    dev = [json.loads(x) for x in (data / "dev_suite.jsonl").read_text().splitlines()]
    assert train == rows[: gen.N_CONSTRAINT_PROMPTS]
    assert dev == [
        {"id": r["id"], "prompt": r["prompt"], "constraints": r["meta"]["constraints"]}
        for r in rows[gen.N_CONSTRAINT_PROMPTS :]
    ]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in dev}
    suite_tasks = {task for task, _ in TOPICS}
    for r in train + dev:
        assert not any(r["prompt"].startswith(t) for t in suite_tasks), r["id"]
    assert not {r["prompt"] for r in build()} & {r["prompt"] for r in train + dev}
    assert {c["kind"] for r in train for c in r["meta"]["constraints"]} == set(verify.FIXES)


def five_grams(text: str) -> set[tuple[str, ...]]:
    from rayalign.checks import WORD

    w = [x.lower() for x in WORD.findall(text)]
    return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}


def test_dev_split_is_phrased_in_a_family_no_training_prompt_uses():
    """The dev split measures transfer to new wordings: its instructions are all in `DEV_FAMILY`, the
    training prompts' in `TRAIN_FAMILIES` (several per kind, each really used), and no run of five
    words of a dev instruction occurs in a training instruction (parameter values such as a closing
    phrase aside: they are the constraint, not its wording)."""
    import json
    import random
    from collections import defaultdict
    from pathlib import Path

    from rayalign.generate import instructions as ins

    data = Path(__file__).parents[2] / "rayjobs" / "data"
    train = [json.loads(x) for x in (data / "constraint_prompts.jsonl").read_text().splitlines()]
    dev = [json.loads(x) for x in (data / "dev_suite.jsonl").read_text().splitlines()]
    assert ins.DEV_FAMILY not in ins.TRAIN_FAMILIES and len(ins.TRAIN_FAMILIES) >= 3

    def families(row: dict, constraints: list[dict]) -> list[int]:
        """Which family wrote each instruction: the one whose rendering of the constraint is in the prompt."""
        out = []
        for c in constraints:
            params = {k: v for k, v in c.items() if k != "kind"}
            hits = [f for f, render in enumerate(ins.PHRASINGS[c["kind"]]) if render(**params) in row["prompt"]]
            assert len(hits) == 1, (row["id"], c, hits)
            out += hits
        return out

    used: dict[str, set[int]] = defaultdict(set)
    for r in train:
        for c, f in zip(r["meta"]["constraints"], families(r, r["meta"]["constraints"])):
            assert f in ins.TRAIN_FAMILIES, r["id"]
            used[c["kind"]].add(f)
    assert all(fams == set(ins.TRAIN_FAMILIES) for fams in used.values()), dict(used)
    assert all(f == ins.DEV_FAMILY for r in dev for f in families(r, r["constraints"]))

    def instruction_text(prompt: str) -> str:
        return prompt.split(". ", 1)[1]  # the task is the first sentence

    values = set().union(*(five_grams(p) for p in ins.OPENERS + ins.CLOSERS))
    trained = set().union(*(five_grams(instruction_text(r["prompt"])) for r in train)) - values
    dev_grams = set().union(*(five_grams(instruction_text(r["prompt"])) for r in dev)) - values
    assert len(dev_grams) > 150 and not dev_grams & trained, sorted(dev_grams & trained)[:5]
    # and over every parameter draw, not only the bundled ones
    rendered = {
        f: set().union(
            *(
                five_grams(ins.instruction(k, random.Random(s), ["habit", "daily", "sleep"], f)[0])
                for k in ins.PHRASINGS
                for s in range(30)
            )
        )
        - values
        for f in range(ins.N_FAMILIES)
    }
    assert not rendered[ins.DEV_FAMILY] & set().union(*(rendered[f] for f in ins.TRAIN_FAMILIES))
