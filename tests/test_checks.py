"""Every constraint checker with hand-made passing and failing responses."""

from __future__ import annotations

import json

import pytest

from rayalign.checks import CHECKS, check_response, count_sentences, kind_groups
from rayalign.eval import make_suite

CASES = [  # (constraint, passing response, failing response)
    ({"kind": "lowercase"}, "rain falls from clouds.", "Rain falls from clouds."),
    ({"kind": "uppercase"}, "RAIN FALLS, 100%!", "RAIN FALLS from CLOUDS"),
    (
        {"kind": "include_keywords", "keywords": ["rain", "Cloud"]},
        "Rain comes from a cloud.",
        "Rain comes from clouds.",
    ),
    ({"kind": "forbidden_words", "words": ["rain", "sun"]}, "Raining and sunny days.", "The Sun is out."),
    (
        {"kind": "keyword_frequency", "keyword": "tea", "min": 2},
        "Tea first; tea again, steep.",
        "Tea, then teapot, then teas.",
    ),
    ({"kind": "start_with", "phrase": "My answer is"}, "  my answer is yes.", "Well, my answer is yes."),
    ({"kind": "end_with", "phrase": "That is all."}, "Done.\nThat is all.  \n", "That is all. Bye."),
    ({"kind": "bullet_count", "count": 3}, "Tips:\n- a\n* b\n• c\n", "- a\n- b\n-c (not a bullet)\n"),
    ({"kind": "json_format"}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ({"kind": "max_words", "max": 5}, "one two three four five.", "one two three four five six"),
    ({"kind": "min_words", "min": 4}, "It's a well-known fact.", "Too short here"),
    ({"kind": "max_sentences", "max": 2}, "Yes. Maybe not", "One. Two! Three"),
    ({"kind": "no_commas"}, "No commas at all.", "One, two."),
    (
        {"kind": "sections", "count": 2, "marker": "Section"},
        "Section 1\nintro\n## SECTION 2\nend",
        "Section 1\nSection two",
    ),
    ({"kind": "paragraphs", "count": 2}, "First para.\nstill first.\n\n  \nSecond.", "Only one paragraph."),
    ({"kind": "quotation"}, ' "Quoted answer." ', 'Quoted "answer."'),
    ({"kind": "title"}, "<<Rain>>\nRain falls.", "<Rain>\nRain falls."),
    ({"kind": "placeholders", "min": 2}, "Dear [name], see you on [date].", "Dear [name], see you []."),
    ({"kind": "postscript", "marker": "P.S."}, "Body.\n\nP.S. bring tea.", "Body. PS bring tea."),
    # the held-out kinds: a bullet "* a" and **bold** are not highlights; 2*3*4 is arithmetic
    ({"kind": "highlights", "min": 2}, "An *early* start and *a calm walk*.", "* a\n* b\n**bold** 2*3*4"),
    ({"kind": "numbered_items", "count": 2}, "Steps:\n1. Boil\n2) Pour", "1. Boil\n2. Pour\n3. Sip"),
    ({"kind": "ends_with_question"}, "Shall we go?  \n", "Is it? Yes."),
    (
        {"kind": "two_responses"},
        "Tea is calming.\n******\nCoffee wakes you up.",
        "Tea is calming.\n******\nTea is calming.",  # two equal answers are one answer
    ),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[c[0]["kind"] for c in CASES])
def test_checker_pass_and_fail(constraint, good, bad):
    assert check_response([constraint], good) == [True]
    assert check_response([constraint], bad) == [False]


def test_every_kind_has_cases():
    assert {c[0]["kind"] for c in CASES} == set(CHECKS)


def test_several_constraints_and_errors():
    r = "- tea\n- cake"
    assert check_response([{"kind": "bullet_count", "count": 2}, {"kind": "no_commas"}, {"kind": "uppercase"}], r) == [
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="unknown constraint kind 'shout'"):
        check_response([{"kind": "shout"}], r)
    with pytest.raises(ValueError, match="wrong parameters for 'max_words'"):
        check_response([{"kind": "max_words"}], r)


def test_sentence_counting():
    """'Dr. Who? Yes': '.' and '?' each end a sentence (abbreviations count too: a known
    simplification) and the unterminated 'Yes' is a third; '3.5 m.' has one end (no space after '3.')."""
    assert count_sentences("Dr. Who? Yes") == 3 and count_sentences("It is 3.5 m.") == 1
    assert count_sentences("") == 0 and count_sentences("One.") == 1 and count_sentences("a b") == 1


def test_suite_is_generated_and_checkable():
    rows = [json.loads(x) for x in make_suite.SUITE_PATH.read_text().splitlines()]
    assert make_suite.render(make_suite.build()) == make_suite.SUITE_PATH.read_text(), "re-run make_suite"
    assert len(rows) >= 100 and len({r["id"] for r in rows}) == len(rows)
    kinds = {c["kind"] for r in rows for c in r["constraints"]}
    assert len(kinds) >= 12 and kinds <= set(CHECKS)
    for r in rows:  # every constraint runs (parameters complete) on an arbitrary response
        assert len(check_response(r["constraints"], "some answer")) == len(r["constraints"])


def test_kind_groups_split_seen_from_unseen():
    """The held-out kinds are "unseen", every other kind "seen"; both sorted, duplicates once."""
    got = kind_groups(["no_commas", "min_words", "title", "two_responses", "title"])
    assert got == {"seen": ["no_commas", "title"], "unseen": ["min_words", "two_responses"]}
    assert kind_groups([]) == {"seen": [], "unseen": []}
