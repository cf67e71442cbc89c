"""Format leaks and repetition: each detector by hand, and rates counted only where a format was not asked."""

from __future__ import annotations

from rayalign.eval.leaks import has_title, json_wrapped, leak_rates, leaks_md, repeated_phrase, starts_quoted


def test_detectors():
    assert starts_quoted('  "Sleep helps."') and starts_quoted("“Sleep”") and not starts_quoted('He said "hi"')
    assert json_wrapped('{"response": "x"}') and json_wrapped('```json\n["a"]\n```')
    assert not json_wrapped("42") and not json_wrapped("{not json}")  # a bare number is not a wrapper
    assert has_title("<<Tides>>\nThe moon pulls.") and has_title("\n# Tides\ntext") and not has_title("#1 tip: rest")
    # "here is my answer" four times: degenerate; three times: not yet
    assert repeated_phrase("Here is my answer: " * 4) and not repeated_phrase("Here is my answer: " * 3 + "ok")
    assert not repeated_phrase("a b c")


def test_rates_count_only_prompts_that_did_not_ask():
    suite = [
        {"constraints": [{"kind": "quotation"}]},  # asked for quotes: its quotes are no leak
        {"constraints": [{"kind": "no_commas"}]},
        {"constraints": [{"kind": "postscript"}]},
        {"constraints": [{"kind": "lowercase"}]},
    ]
    answers = ['"quoted"', '"quoted too"\n\nP.S. extra', "Body.\n\nP.S. asked", "plain plain plain plain " * 2]
    r = leak_rates(suite, answers)
    assert r["quotes"] == {"rate": 1 / 3, "count": 1, "n": 3}  # prompts 2-4; only prompt 2's answer
    assert r["postscript"] == {"rate": 1 / 3, "count": 1, "n": 3}  # prompts 1, 2, 4; prompt 2
    assert r["any"] == {"rate": 0.5, "count": 1, "n": 2}  # prompts 2 and 4 ask for none of the formats
    assert r["repetition"] == {"rate": 0.25, "count": 1, "n": 4}  # "plain plain plain plain" ×5
    md = "\n".join(leaks_md({"baseline": {"leaks": r}, "aligned": {"leaks": r}}, ["baseline", "aligned"]))
    assert "| starts with a quote | 3 | 0.333 (1) | 0.333 (1) |" in md


def test_answer_length_where_the_prompt_sets_none():
    """Prompts 1 and 3 set a length (max_words, max_sentences): left out. Prompts 2, 4, 5 answer with
    3, 25 and 24 words ("It's", "well-known": one word each) → median 24, mean 52/3, one answer
    (3 words) under 20."""
    from rayalign.eval.leaks import answer_lengths

    suite = [
        {"constraints": [{"kind": "max_words", "max": 5}]},
        {"constraints": [{"kind": "no_commas"}]},
        {"constraints": [{"kind": "max_sentences", "max": 1}, {"kind": "lowercase"}]},
        {"constraints": [{"kind": "lowercase"}]},
        {"constraints": []},
    ]
    answers = ["one two three four five", "Tea is warm.", "x " * 40, "word " * 25, "It's a well-known fact. " * 6]
    r = answer_lengths(suite, answers)
    assert r == {"n": 3, "median": 24.0, "mean": 52 / 3, "short": {"rate": 1 / 3, "count": 1, "n": 3}}
    both = leak_rates(suite, answers)
    md = "\n".join(leaks_md({"baseline": {"leaks": both}, "aligned": {"leaks": both}}, ["baseline", "aligned"]))
    assert "| words per answer, median (prompts setting no length) | 3 | 24 | 24 |" in md
    assert "| answers under 20 words (prompts setting no length) | 3 | 0.333 (1) | 0.333 (1) |" in md
    assert answer_lengths([{"constraints": [{"kind": "min_words", "min": 9}]}], ["a"])["n"] == 0
