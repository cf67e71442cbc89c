"""The independent held-out suite: generated, checkable, and out of the training side's reach.

- the training side (bundled-data generators, generate/, rl/, prefer/, train/) imports nothing
  from the eval package, so no training prompt can be built from an eval suite's generator;
- no run of five words of held-out instruction text occurs in any training or dev prompt (n-gram
  overlap, not only whole-prompt equality), nor in any phrasing family of the training generator
  rendered over many parameter draws; the allowance is zero shared 5-grams: the generators were
  written to meet it, and a shared 5-gram would be a phrase a model could learn verbatim;
- the unseen kinds (`rayalign.checks.HELDOUT_KINDS`) have no rule fix and occur in no training
  prompt file.
"""

from __future__ import annotations

import ast
import json
import random
from collections import Counter
from pathlib import Path

from rayalign.checks import CHECKS, HELDOUT_KINDS, WORD, check_response
from rayalign.eval import heldout, make_suite
from rayalign.generate import instructions, verify

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "rayjobs" / "data"
TRAINING_CODE = [
    DATA,
    ROOT / "src/rayalign/generate",
    ROOT / "src/rayalign/rl",
    ROOT / "src/rayalign/prefer",
    ROOT / "src/rayalign/train",
]


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module:
            found.add(n.module)
            found.update(f"{n.module}.{a.name}" for a in n.names)
    return found


def test_training_code_imports_no_eval_generator():
    offenders = []
    for folder in TRAINING_CODE:
        for path in folder.rglob("*.py"):
            bad = {m for m in imported_modules(path) if m == "rayalign.eval" or m.startswith("rayalign.eval.")}
            offenders += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(bad)]
    assert not offenders, offenders
    # the scan sees a real import: this test file imports the eval generators it checks
    assert "rayalign.eval.heldout" in imported_modules(Path(__file__))


def json_rows(path: Path) -> list[dict]:
    """The object rows of a bundled JSONL (its deliberately bad rows skipped)."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def prompt_texts(path: Path) -> list[str]:
    """Every user-visible prompt text of a bundled JSONL (prompts, pairs, chats, suites)."""
    out = []
    for row in json_rows(path):
        if isinstance(row.get("prompt"), str):
            out.append(row["prompt"])
        for m in row.get("messages") or [] if isinstance(row.get("messages"), list) else []:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                out.append(m["content"])
    return out


def grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = [x.lower() for x in WORD.findall(text)]
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_no_shared_five_word_run_with_training_or_dev_prompts():
    rows = heldout.build()
    held = set().union(*(grams(t) for t in heldout.instruction_texts(rows)))
    assert len(held) > 500  # the instruction texts are really there
    files = sorted(DATA.glob("*.jsonl")) + sorted((DATA / "tiny").glob("*.jsonl"))
    assert DATA / "constraint_prompts.jsonl" in files and DATA / "dev_suite.jsonl" in files
    for path in files:
        seen = set().union(*(grams(t) for t in prompt_texts(path)))
        assert not held & seen, (path.name, sorted(held & seen)[:5])
    # the packaged ifeval suite carries the training templates: the held-out suite shares none of it
    assert not held & set().union(*(grams(r["prompt"]) for r in make_suite.build()))
    # nor a task: the held-out subjects are its own
    tasks = {t for t, _ in heldout.TASKS}
    assert not any(p.startswith(t) for p in prompt_texts(DATA / "constraint_prompts.jsonl") for t in tasks)
    assert not tasks & {t for t, _ in make_suite.TOPICS}


def test_no_training_phrasing_family_shares_a_five_word_run_with_the_heldout_suite():
    """Every phrasing family of the training generator, rendered for every kind over many parameter
    draws (not only the draws the bundled files happen to hold), stays clear of held-out text."""
    held = set().union(*(grams(t) for t in heldout.instruction_texts(heldout.build())))
    rendered: set[tuple[str, ...]] = set()
    for kind in instructions.PHRASINGS:
        assert len(instructions.PHRASINGS[kind]) == instructions.N_FAMILIES, kind
        for family in range(instructions.N_FAMILIES):
            for seed in range(30):
                text, _ = instructions.instruction(kind, random.Random(seed), ["habit", "daily", "sleep"], family)
                rendered |= grams(text)
    assert len(rendered) > 800  # all four families of all kinds are really there
    assert not held & rendered, sorted(held & rendered)[:5]


def test_ngram_check_catches_a_paraphrase_that_reuses_training_words():
    """The overlap measure is not vacuous: a held-out sentence that reuses a training phrase is caught."""
    train = grams("Tell me about Peru. Answer in at most 20 words.")
    assert grams("Describe lighthouses. Please answer in at most 20 words.") & train
    assert not grams("Describe lighthouses. Keep it short: 20 words or fewer.") & train


def test_heldout_suite_is_generated_checkable_and_covers_unseen_kinds():
    rows = [json.loads(x) for x in heldout.SUITE_PATH.read_text().splitlines()]
    assert heldout.render(heldout.build()) == heldout.SUITE_PATH.read_text(), "re-run python -m rayalign.eval.heldout"
    assert heldout.main(["--check"]) == 0
    assert len({r["id"] for r in rows}) == len(rows) == heldout.N_PROMPTS
    main_kinds = Counter(r["constraints"][0]["kind"] for r in rows)
    assert set(main_kinds) == set(heldout.KINDS) and min(main_kinds.values()) == 6
    assert set(HELDOUT_KINDS) <= set(main_kinds) and set(HELDOUT_KINDS) <= set(CHECKS)
    for r in rows:
        assert len(check_response(r["constraints"], "An answer.")) == len(r["constraints"])
    # several paraphrase families per kind actually used: at least two distinct texts per kind
    texts = dict(zip([r["id"] for r in rows], heldout.instruction_texts(rows)))
    for kind in heldout.KINDS:
        firsts = {texts[r["id"]].split(".")[0][:20] for r in rows if r["constraints"][0]["kind"] == kind}
        assert len(firsts) >= 2, kind


def test_unseen_kinds_are_out_of_every_training_path():
    assert not set(HELDOUT_KINDS) & set(verify.FIXES)  # the rule reviser cannot target them
    for name in ("constraint_prompts.jsonl", "prompts.jsonl", "dev_suite.jsonl", "tiny/prompts.jsonl"):
        for row in json_rows(DATA / name):
            cons = row.get("constraints") or (row.get("meta") or {}).get("constraints") or []
            assert not {c.get("kind") for c in cons} & set(HELDOUT_KINDS), (name, row.get("id"))
