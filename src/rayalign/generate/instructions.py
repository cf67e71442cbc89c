"""The training prompts' instruction templates: several phrasing families per constraint kind, and
which kinds combine.

Each kind has `N_FAMILIES` phrasings of the same constraint (a plain imperative, a question, a
label-first form, a conversational one, in a different order per kind). `instruction()` draws the
constraint's parameters from `rng` and renders them with the family it is given. The bundled
training prompts (`rayjobs/data/make_sample_data.py`) use `TRAIN_FAMILIES` and their dev split uses
`DEV_FAMILY` only, a phrasing no training prompt carries: the dev split reads transfer to new
wordings of trained constraints, not recall of the training sentences. Family 0 is the packaged
`ifeval` suite's (`rayalign.eval.make_suite`), which therefore measures trained-template
performance.

The independent held-out suite (`rayalign.eval.heldout`) is written apart: its own paraphrase
families, none sharing a run of five words with the training or dev prompts (a test checks the
n-gram overlap), and kinds no training prompt carries (`rayalign.checks.HELDOUT_KINDS`). Training
code never imports the eval package's generators (a test checks that too).
"""

from __future__ import annotations

import random
from collections.abc import Callable

OPENERS = ["My answer is", "Here is the answer", "In short", "Good question", "To begin"]
CLOSERS = ["Is there anything else I can help with?", "That is all.", "Hope this helps.", "The end."]

N_FAMILIES = 4
TRAIN_FAMILIES = (0, 1, 2)
DEV_FAMILY = 3


def _params(kind: str, rng: random.Random, keywords: list[str]) -> dict:
    """The constraint's parameters, drawn from `rng` (the same draws whichever family renders them)."""
    if kind == "include_keywords":
        return {"keywords": rng.sample(keywords, 2)}
    if kind == "forbidden_words":
        return {"words": rng.sample(keywords, 2)}
    if kind == "keyword_frequency":
        return {"keyword": rng.choice(keywords), "min": rng.choice([2, 3])}
    if kind == "start_with":
        return {"phrase": rng.choice(OPENERS)}
    if kind == "end_with":
        return {"phrase": rng.choice(CLOSERS)}
    if kind == "bullet_count":
        return {"count": rng.choice([2, 3, 4, 5])}
    if kind == "max_words":
        return {"max": rng.choice([15, 20, 30, 40])}
    if kind == "min_words":
        return {"min": rng.choice([40, 60, 80])}
    if kind == "max_sentences":
        return {"max": rng.choice([1, 2, 3])}
    if kind in ("sections", "paragraphs"):
        params: dict = {"count": rng.choice([2, 3])}
        return {**params, "marker": "Section"} if kind == "sections" else params
    if kind == "placeholders":
        return {"min": rng.choice([1, 2, 3])}
    if kind == "postscript":
        return {"marker": "P.S."}
    if kind in ("lowercase", "uppercase", "json_format", "no_commas", "quotation", "title"):
        return {}
    raise ValueError(kind)


def _sentences(n: int) -> str:
    return "sentence" if n == 1 else "sentences"


Phrasing = Callable[..., str]

# kind -> its phrasing families (index = family), each rendering the constraint's parameters
PHRASINGS: dict[str, list[Phrasing]] = {
    "lowercase": [
        lambda: "Your entire response must be in lowercase letters; no capital letters are allowed.",
        lambda: "Could you write everything in small letters, with no capitals at all?",
        lambda: "Lowercase only: not one capital letter anywhere in the answer.",
        lambda: "Keep every letter lowercase, please, even at the start of sentences and names.",
    ],
    "uppercase": [
        lambda: "Your entire response must be in English capital letters only.",
        lambda: "Can you answer entirely in uppercase letters?",
        lambda: "Capitals only, from the first word to the last.",
        lambda: "Every word you write should be in upper case, LIKE THIS.",
    ],
    "include_keywords": [
        lambda keywords: f"Include the keywords '{keywords[0]}' and '{keywords[1]}' in your response.",
        lambda keywords: f"Could you use the words '{keywords[0]}' and '{keywords[1]}' when you answer?",
        lambda keywords: f"Required words: '{keywords[0]}' and '{keywords[1]}'.",
        lambda keywords: f"Be sure your answer brings in both '{keywords[0]}' and '{keywords[1]}'.",
    ],
    "forbidden_words": [
        lambda words: f"Do not use the words '{words[0]}' or '{words[1]}' anywhere in your response.",
        lambda words: f"Can you answer without ever writing '{words[0]}' or '{words[1]}'?",
        lambda words: f"Banned words: '{words[0]}' and '{words[1]}'.",
        lambda words: f"Keep '{words[0]}' and '{words[1]}' out of your answer entirely.",
    ],
    "keyword_frequency": [
        lambda keyword, min: f"Use the word '{keyword}' at least {min} times.",
        lambda keyword, min: f"Could you say '{keyword}' {min} times or more in your answer?",
        lambda keyword, min: f"Repetition rule: the word '{keyword}' has to appear {min} or more times.",
        lambda keyword, min: f"Bring up '{keyword}' repeatedly, {min} times at minimum.",
    ],
    "start_with": [
        lambda phrase: f"Begin your response with the exact phrase '{phrase}'.",
        lambda phrase: f"Could you start your answer with the words '{phrase}'?",
        lambda phrase: f"First words, exactly as given: '{phrase}'.",
        lambda phrase: f"Let the answer open with '{phrase}', word for word.",
    ],
    "end_with": [
        lambda phrase: f"Finish your response with the exact phrase '{phrase}' and write nothing after it.",
        lambda phrase: f"Can you end your answer with '{phrase}', adding nothing after it?",
        lambda phrase: f"Closing words required: '{phrase}' with nothing after them.",
        lambda phrase: f"Make '{phrase}' the very last thing you write.",
    ],
    "bullet_count": [
        lambda count: (
            f"Your answer must contain exactly {count} bullet points, written as markdown bullets like: - point."
        ),
        lambda count: f"Could you list {count} points as markdown bullets (lines that start with '- ')?",
        lambda count: f"Bullet list of exactly {count} items, markdown style (- item).",
        lambda count: f"Put your answer in {count} markdown bullet points, exactly that many.",
    ],
    "json_format": [
        lambda: "Wrap your entire output in JSON format; the whole answer must be valid JSON.",
        lambda: "Can you give the whole answer as valid JSON?",
        lambda: "Output format: JSON only, nothing outside it.",
        lambda: "Answer as a JSON object, with no text before or after it.",
    ],
    "max_words": [
        lambda max: f"Answer in at most {max} words.",
        lambda max: f"Can you answer in {max} words or less?",
        lambda max: f"Word limit: {max}.",
        lambda max: f"Be brief: your whole answer has to fit in {max} words.",
    ],
    "min_words": [
        lambda min: f"Write at least {min} words.",
        lambda min: f"Could you write {min} words or more?",
        lambda min: f"Length: not under {min} words.",
        lambda min: f"Give a long answer of {min} words at minimum.",
    ],
    "max_sentences": [
        lambda max: f"Answer in at most {max} {_sentences(max)}.",
        lambda max: f"Can you keep the answer to {max} {_sentences(max)} or less?",
        lambda max: f"Sentence limit: {max}.",
        lambda max: f"Say it all in no more than {max} {_sentences(max)}.",
    ],
    "no_commas": [
        lambda: "Do not use any commas in your response.",
        lambda: "Can you write this without any commas?",
        lambda: "Commas are banned in this answer.",
        lambda: "Zero commas, please: not one in the whole answer.",
    ],
    "sections": [
        lambda count, marker: (
            f"Split your response into {count} sections, starting each with '{marker} X' ({marker} 1, {marker} 2, ...)."
        ),
        lambda count, marker: (
            f"Can you divide the answer into {count} sections labelled '{marker} 1', '{marker} 2', and onward?"
        ),
        lambda count, marker: f"Structure: {count} sections, each opening with a line such as '{marker} 1'.",
        lambda count, marker: (
            f"Use {count} sections in your answer; the first begins '{marker} 1', the next '{marker} 2'."
        ),
    ],
    "paragraphs": [
        lambda count: f"Write exactly {count} paragraphs, separated from each other by one blank line.",
        lambda count: f"Could you write {count} paragraphs with a blank line between them?",
        lambda count: f"Paragraph count: {count}, blank lines in between.",
        lambda count: f"Answer in {count} paragraphs; leave an empty line after each one except the last.",
    ],
    "quotation": [
        lambda: "Wrap your entire response in double quotation marks.",
        lambda: "Could you put your whole answer in double quotation marks?",
        lambda: "Format: the full answer between double quotation marks.",
        lambda: "Start your answer with a double quote and end it with one too.",
    ],
    "title": [
        lambda: "Give your answer a title wrapped in double angular brackets, such as <<my title>>.",
        lambda: "Can you add a title in double angular brackets, like <<a title>>?",
        lambda: "Title required, in the form <<title here>>.",
        lambda: "Head the answer with a title between << and >>.",
    ],
    "placeholders": [
        lambda min: f"Include at least {min} placeholder(s) in square brackets, such as [name] or [date].",
        lambda min: f"Could you include {min} or more bracketed gaps to fill, like [city]?",
        lambda min: f"Placeholders: at least {min}, each in square brackets, for example [address].",
        lambda min: f"Use square-bracket placeholders such as [time], {min} of them or more.",
    ],
    "postscript": [
        lambda marker: f"At the end of your response, add a postscript starting with {marker}",
        lambda marker: f"Can you finish with a postscript that starts with {marker}?",
        lambda marker: f"Postscript required at the end, beginning {marker}",
        lambda marker: f"After your main answer, close with a short {marker} note.",
    ],
}


def instruction(kind: str, rng: random.Random, keywords: list[str], family: int = 0) -> tuple[str, dict]:
    """One training instruction sentence in phrasing `family` and the constraint that checks it.

    The parameters are drawn from `rng` the same way for every family, so a family changes the words
    only (family 0 is the packaged `ifeval` suite's phrasing).
    """
    params = _params(kind, rng, keywords)
    return PHRASINGS[kind][family](**params), {"kind": kind, **params}


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
