"""Revisions a person would accept: the detectors on the old rule fixes' output and on natural text,
every rule fix's output on the eval suite passing them, and the CLAIR stage quarantining the rest."""

from __future__ import annotations

import json
import typing

import pydantic
import pytest

from rayalign.eval.make_suite import build
from rayalign.generate import verify
from rayalign.generate.acceptable import revision_problem
from rayalign.generate.clair import ClairConfig, ClairProcessor
from rayalign.generate.contrast import UNASKED_FORMATS, FormatName


@pytest.mark.parametrize(
    ("original", "revision", "constraints", "reason"),
    [
        # what the rule fixes used to write
        (
            "Sleep well.",
            "Sleep well. sleep sleep",
            [{"kind": "keyword_frequency", "keyword": "sleep", "min": 3}],
            "keyword_stuffing",
        ),
        (
            "Dear [name], hi.",
            "Dear [name], hi. [name] [place]",
            [{"kind": "placeholders", "min": 3}],
            "keyword_stuffing",
        ),
        (
            "Magma rises.",
            "Magma rises. ash pressure",
            [{"kind": "include_keywords", "keywords": ["ash", "pressure"]}],
            "keyword_stuffing",
        ),
        (
            "Tea is calm. It is warm.",
            '{"response": "Tea is calm. It is warm."}',
            [{"kind": "json_format"}],
            "json_wrapper",
        ),
        ("My answer.", "Here is my answer: " * 4, [], "repetitive"),
        ("Tea.", "Tea. Drink more tea now. Drink more tea now.", [], "repetitive"),
        ("Tea.", "Tea tea is tea and tea.", [], "keyword_stuffing"),  # one word a quarter of the text, doubled
        ("Rain falls on the hills today.", "rain rain rain falls on hills.", [], "keyword_stuffing"),
    ],
)
def test_unnatural_revisions_are_caught(original, revision, constraints, reason):
    found = revision_problem(original, revision, constraints)
    assert found is not None and found[0] == reason, found


def test_natural_revisions_and_inherited_problems_pass():
    assert (
        revision_problem("Sleep well.", "Sleep well. In short it comes down to sleep. Keep sleep in mind.", []) is None
    )
    assert (
        revision_problem("He said hi. Then he left.", '{"summary": "He said hi.", "points": ["Then he left."]}', [])
        is None
    )
    assert revision_problem("Paris.", '{"answer": "Paris."}', []) is None  # a one-line answer as one field is fine
    stuffed = "Tea tea is tea and tea."
    assert revision_problem(stuffed, stuffed.upper(), []) is None  # stuffing the original had is not the revision's
    loop = "go on and on " * 5
    found = revision_problem(loop, loop.upper(), [])  # a looping chosen answer teaches looping, whoever wrote it
    assert found is not None and found[0] == "repetitive"


def test_every_rule_fix_on_the_suite_is_acceptable():
    """A plain answer fixed for each packaged-suite prompt (all trained kinds) passes its checks and
    every detector: the rule reviser writes text a person would accept."""
    answer = "Bees visit many flowers in the garden. They carry nectar back to the hive for honey."
    checked = 0
    for row in build():
        meta = {"constraints": row["constraints"]}
        fixed = verify.rule_fix(meta, answer)
        if fixed is None:
            continue
        checked += 1
        assert revision_problem(answer, fixed, row["constraints"]) is None, (row["id"], fixed)
    assert checked >= 100


def test_clair_quarantines_unacceptable_revisions(tmp_path):
    """An LLM-free rule pass: a good fix becomes a pair; a revision that only stuffs keywords is quarantined
    with its reason and the revision kept for inspection; in = pairs + quarantined."""
    cfg = ClairConfig(inputs=["unused"], output=str(tmp_path), reviser="rule")
    proc = ClairProcessor(cfg)
    kw = {"constraints": [{"kind": "keyword_frequency", "keyword": "tea", "min": 6}]}
    rows = [
        {
            "id": "ok",
            "prompt": "Say hi",
            "response": "Hello, friend.",
            "meta": {"constraints": [{"kind": "no_commas"}]},
        },
        # six "tea"s in a three-word answer: whatever the fix writes, "tea" fills over a quarter of it
        {"id": "stuffed", "prompt": "Tea?", "response": "Yes please.", "meta": kw},
    ]
    out = proc.process(rows)
    assert [r["id"] for r in out.rows] == ["ok"] and out.rows[0]["chosen"] == "Hello friend."
    (q,) = out.quarantine
    assert q["reason"] == "repetitive" and "'in short it comes down to tea' more than once" in q["detail"]
    assert "In short it comes down to tea." in json.loads(q["raw"])["revision"]
    assert out.stats["status.repetitive"] == 1 and len(out.rows) + len(out.quarantine) == len(rows)
    assert ClairProcessor(cfg.model_copy(update={"quality_checks": False})).process(rows).rows[1]["id"] == "stuffed"


def test_clair_stage_counts_the_quality_quarantine_and_the_eval_report_shows_pairs(tmp_path):
    """The model-free CLAIR stage end to end: in = pairs + quarantined with the quality reason in the
    manifest; the eval report's pair table reads that stage's output through the run's summary."""
    from rayalign.data.shards import read_dataset
    from rayalign.eval.stage import clair_pairs
    from rayalign.generate.clair import run_clair

    rows = [
        {
            "id": "a",
            "prompt": "Capital of Italy?",
            "response": "Rome, Italy.",
            "meta": {"constraints": [{"kind": "no_commas"}]},
        },
        {
            "id": "b",
            "prompt": "Tea?",
            "response": "Yes please.",
            "meta": {"constraints": [{"kind": "keyword_frequency", "keyword": "tea", "min": 6}]},
        },
    ]
    inp = tmp_path / "samples.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run" / "clair"
    m = run_clair(
        ClairConfig(inputs=[str(inp)], output=str(out), reviser="rule", pool={"workers": 0}), log=lambda *_: None
    )
    c = m.counts.to_json()
    assert (c["in"], c["out_rows"], c["by_reason"]) == (2, 1, {"repetitive": 1})
    assert read_dataset(out).column("chosen").to_pylist() == ["Rome Italy."]
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"stages": [{"stage": "clair", "output": str(out)}]}))
    assert clair_pairs(str(tmp_path / "run")) == [
        {
            "id": "a",
            "prompt": "Capital of Italy?",
            "chosen": "Rome Italy.",
            "rejected": "Rome, Italy.",
            "status": "rule_fixed",
        }
    ]
    assert clair_pairs(str(tmp_path / "nothing")) == []


def test_format_contrast_pairs_prefer_the_plain_answer_to_an_unasked_format(tmp_path):
    """With format_contrast each plain answer (a fix, or an original that passes) also gives a pair whose
    rejected side is the same answer with a format the prompt did not ask for; a chosen answer showing an
    unasked format is quarantined; the format is a stable function of the row id."""
    from rayalign.generate.contrast import UNASKED_FORMATS, format_contrast

    cfg = ClairConfig(inputs=["unused"], output=str(tmp_path), reviser="rule", format_contrast=True)
    rows = [
        {"id": "fix", "prompt": "Hi", "response": "Hello, friend.", "meta": {"constraints": [{"kind": "no_commas"}]}},
        {"id": "passes", "prompt": "Hi", "response": "Hello friend.", "meta": {"constraints": [{"kind": "no_commas"}]}},
        {
            "id": "quoted",
            "prompt": "Hi",
            "response": '"Hello, friend."',
            "meta": {"constraints": [{"kind": "no_commas"}]},
        },
    ]
    out = ClairProcessor(cfg).process(rows)
    by_id = {r["id"]: r for r in out.rows}
    assert sorted(by_id) == ["fix", "fix-fmt", "passes-fmt"]
    assert (by_id["fix"]["chosen"], by_id["fix"]["rejected"]) == ("Hello friend.", "Hello, friend.")
    for key in ("fix-fmt", "passes-fmt"):
        pair = by_id[key]
        name = pair["raw"].removeprefix("format: ")
        assert pair["status"] == "format_contrast" and pair["chosen"] == "Hello friend."
        assert pair["rejected"] == UNASKED_FORMATS[name][2]("Hello friend.") != pair["chosen"]
    [q] = out.quarantine
    assert (q["reason"], q["detail"]) == (
        "unasked_format",
        "no pair: the chosen answer shows a format the prompt did not ask for: quotes",
    )
    assert out.stats["contrast_pairs"] == 2 and out.stats["revision_pairs"] == 1
    # a prompt asking for quotes gets no quoted rejected side; one asking for all four formats gets none
    picks = {format_contrast("Tea is warm.", {"quotation"}, f"row{i}")[0] for i in range(40)}  # type: ignore[index]
    assert picks == {"json", "postscript", "title"}
    assert format_contrast("Tea is warm.", {"quotation", "json_format", "postscript", "title"}, "x") is None
    assert format_contrast("Tea is warm.", set(), "row7") == format_contrast("Tea is warm.", set(), "row7")
    assert format_contrast("Tea is warm.", set(), "row1")[1] in {  # type: ignore[index]
        '"Tea is warm."',
        '{"answer": "Tea is warm."}',
        "Tea is warm.\n\nP.S. Thank you for reading.",
        "<<Tea Is Warm>>\nTea is warm.",
    }


def test_length_contrast_pairs_prefer_the_whole_answer_unless_brevity_was_asked(tmp_path):
    """With length_contrast each plain answer to a prompt that sets no length limit also gives a pair
    whose rejected side is the answer cut after its first sentences (a third of them, at least one
    sentence of 5+ words, at most half the words), as the max_sentences fix cuts; a prompt asking for
    brevity gets none, and the input rows' statuses still reconcile (one per row)."""
    from rayalign.generate.contrast import length_contrast

    six = (
        "Tea is warm and calm. It grows on hills. People pick it by hand. It dries in the sun. Then it is "
        "rolled. Water wakes it."
    )
    # 6 sentences, 26 words: a third is 2 sentences, 9 words
    assert length_contrast(six, set()) == "Tea is warm and calm. It grows on hills."
    assert length_contrast(six, {"lowercase"}) == "Tea is warm and calm. It grows on hills."
    assert length_contrast(six, {"max_words"}) is None and length_contrast(six, {"max_sentences"}) is None
    # a first "sentence" of one word ("1.") is no answer: the cut takes the next sentence too
    assert length_contrast("1. Tea is warm and calm. It grows on hills. It dries well.", set()) == (
        "1. Tea is warm and calm."
    )
    # one sentence, or a first sentence holding most of the words: nothing to cut
    assert length_contrast("Tea is warm and calm.", set()) is None
    assert length_contrast("Tea is warm and calm and it grows on the hills of China. It dries.", set()) is None

    cfg = ClairConfig(inputs=["unused"], output=str(tmp_path), reviser="rule", length_contrast=True)
    rows = [
        {
            "id": "fix",
            "prompt": "Hi",
            "response": six.replace("calm.", "calm, friend."),
            "meta": {"constraints": [{"kind": "no_commas"}]},
        },
        {"id": "passes", "prompt": "Hi", "response": six, "meta": {"constraints": [{"kind": "no_commas"}]}},
        {"id": "short", "prompt": "Hi", "response": six, "meta": {"constraints": [{"kind": "max_words", "max": 10}]}},
    ]
    out = ClairProcessor(cfg).process(rows)
    by_id = {r["id"]: r for r in out.rows}
    assert sorted(by_id) == ["fix", "fix-len", "passes-len", "short"]
    assert by_id["fix-len"]["chosen"] == six.replace("calm.", "calm friend.")
    assert by_id["fix-len"]["rejected"] == "Tea is warm and calm friend. It grows on hills."
    assert (by_id["passes-len"]["chosen"], by_id["passes-len"]["rejected"]) == (
        six,
        "Tea is warm and calm. It grows on hills.",
    )
    assert {by_id[k]["status"] for k in ("fix-len", "passes-len")} == {"length_contrast"}
    # the max_words prompt's own fix is the short answer, and no pair says otherwise
    assert by_id["short"]["chosen"] == "Tea is warm and calm. It grows on hills."  # 9 words
    assert out.stats["length_contrast_pairs"] == 2 and out.stats["revision_pairs"] == 2
    statuses = {k: v for k, v in out.stats.items() if k.startswith("status.")}
    assert statuses == {"status.rule_fixed": 2, "status.length_contrast": 1}


def test_open_cut_offs_leave_the_end_of_a_cut_off_answer_open(tmp_path):
    """With open_cut_offs, a pair side built from a sampled answer cut off at max_tokens (status
    "truncated") that still ends where the cut was is marked open; a fix that cuts the answer shorter
    or adds words at its end, and every side of an answer that ended, is not. Off, nothing is open."""
    from rayalign.generate.contrast import UNASKED_FORMATS, same_ending

    assert same_ending("hello friend. tea is warm and", "Hello, friend. Tea is warm, and")
    assert not same_ending("Hello friend.", "Hello, friend. Tea is warm, and") and not same_ending("", "")
    cut = "Hello, friend. Tea is warm and the leaves are"
    no_commas = [{"kind": "no_commas"}]
    rows = [
        {"id": "cut", "prompt": "Hi", "response": cut, "status": "truncated", "meta": {"constraints": no_commas}},
        {"id": "ended", "prompt": "Hi", "response": cut, "status": "ok", "meta": {"constraints": no_commas}},
        {
            "id": "short",
            "prompt": "Hi",
            "response": "Tea is warm. It grows on hills and the leaves are",
            "status": "truncated",
            "meta": {"constraints": [{"kind": "max_words", "max": 5}]},
        },
    ]
    cfg = ClairConfig(inputs=["unused"], output=str(tmp_path), reviser="rule", format_contrast=True, open_cut_offs=True)
    by_id = {r["id"]: r for r in ClairProcessor(cfg).process(rows).rows}
    assert sorted(by_id) == ["cut", "cut-fmt", "ended", "ended-fmt", "short", "short-fmt"]
    opened = {k: (r["chosen_open"], r["rejected_open"]) for k, r in by_id.items()}
    assert by_id["cut"]["chosen"] == "Hello friend. Tea is warm and the leaves are"
    assert opened["cut"] == (True, True)  # the fix keeps the cut end: both sides are prefixes
    assert opened["ended"] == (False, False)
    assert by_id["short"]["chosen"] == "Tea is warm." and opened["short"] == (False, True)  # the fix ends it
    assert opened["short-fmt"] == (False, False)  # its plain answer ended, and so did the format added
    name = by_id["cut-fmt"]["raw"].removeprefix("format: ")
    assert by_id["cut-fmt"]["rejected"] == UNASKED_FORMATS[name][2](by_id["cut"]["chosen"])
    # a P.S. added after the cut ends the rejected side; quotes, JSON or a title leave the cut end last
    assert opened["cut-fmt"] == (True, name != "postscript")
    assert opened["ended-fmt"] == (False, False)
    off = ClairConfig(inputs=["unused"], output=str(tmp_path), reviser="rule", format_contrast=True)
    assert {(r["chosen_open"], r["rejected_open"]) for r in ClairProcessor(off).process(rows).rows} == {(False, False)}


def test_open_contrasts_open_both_sides_of_every_format_contrast(tmp_path):
    """With open_contrasts every format-contrast pair (quotes, JSON, P.S., title) has both sides open,
    so it prefers no ending, only no format; the revision pairs keep their ends (open_cut_offs off)."""
    rows = [
        {
            "id": f"r{i}",
            "prompt": "Hi",
            "response": text,
            "status": status,
            "meta": {"constraints": [{"kind": "no_commas"}]},
        }
        for i, (text, status) in enumerate(
            [
                ("Tea, warm and calm, grows on hills.", "ok"),
                ("Tea is calm. It grows on hills.", "ok"),
                ("Tea is calm, and the leaves are", "truncated"),
                ("Rice grows in water.", "ok"),
            ]
        )
    ]
    cfg = ClairConfig(
        inputs=["unused"], output=str(tmp_path), reviser="rule", format_contrast=True, open_contrasts=True
    )
    by_id = {r["id"]: r for r in ClairProcessor(cfg).process(rows).rows}
    assert sorted(by_id) == ["r0", "r0-fmt", "r1-fmt", "r2", "r2-fmt", "r3-fmt"]
    opened = {k: (r["chosen_open"], r["rejected_open"]) for k, r in by_id.items()}
    assert opened == {
        "r0": (False, False),
        "r2": (False, False),
        **{f"r{i}-fmt": (True, True) for i in range(4)},
    }
    assert by_id["r1-fmt"]["chosen"] == "Tea is calm. It grows on hills."
    formats = {r["raw"] for k, r in by_id.items() if k.endswith("-fmt")}
    assert len(formats) >= 2, formats  # the test covers more than one kind of format added
    off = ClairConfig(inputs=["unused"], output=str(tmp_path), reviser="rule", format_contrast=True)
    assert {(r["chosen_open"], r["rejected_open"]) for r in ClairProcessor(off).process(rows).rows} == {(False, False)}


def test_open_contrasts_as_a_list_opens_the_pairs_of_those_formats_only(tmp_path):
    """open_contrasts: [postscript] opens the P.S. contrast pairs and leaves every other format's
    pairs closed; the names it takes are exactly the formats a contrast can add."""
    texts = [
        "Tea is calm. It grows on hills.",
        "Rice grows in water.",
        "Cats sleep a lot.",
        "Rain falls on the roof.",
        "Dogs run in parks.",
        "Bread is baked daily.",
    ]
    rows = [
        {"id": f"r{i}", "prompt": "Hi", "response": t, "status": "ok", "meta": {"constraints": [{"kind": "no_commas"}]}}
        for i, t in enumerate(texts)
    ]
    assert set(typing.get_args(FormatName)) == set(UNASKED_FORMATS)

    def opened(chosen):
        cfg = ClairConfig(
            inputs=["unused"], output=str(tmp_path), reviser="rule", format_contrast=True, open_contrasts=chosen
        )
        return {
            r["id"]: (r["raw"], r["chosen_open"], r["rejected_open"]) for r in ClairProcessor(cfg).process(rows).rows
        }

    assert opened(["postscript"]) == {
        "r0-fmt": ("format: title", False, False),
        "r1-fmt": ("format: json", False, False),
        "r2-fmt": ("format: title", False, False),
        "r3-fmt": ("format: json", False, False),
        "r4-fmt": ("format: postscript", True, True),
        "r5-fmt": ("format: quotes", False, False),
    }
    two = opened(["quotes", "title"])
    assert sorted(k for k, (_, c, r) in two.items() if c and r) == ["r0-fmt", "r2-fmt", "r5-fmt"]
    with pytest.raises(pydantic.ValidationError, match="open_contrasts"):
        ClairConfig(inputs=["unused"], output=str(tmp_path), open_contrasts=["ps"])
