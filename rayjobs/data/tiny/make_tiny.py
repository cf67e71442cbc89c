"""Build the tiny inputs of `rayjobs/configs/pipeline-tiny.yaml` from the bundled samples.

    python rayjobs/data/tiny/make_tiny.py

corpus / chat / pairs: the first 32 rows of `rayjobs/data/*.jsonl` (their deliberately broken rows
included, so quarantine paths run too). prompts: 32 clean prompts whose meta carries checkable
constraints (the eval suite's format), so CLAIR's verifier/rule reviser can revise even the random
tiny model's samples into real preference pairs. Deterministic: re-running rewrites identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE.parent
N = 32

TASKS = [
    "Name a country in Europe.",
    "Describe the colour of the sky.",
    "Give one tip for sleeping well.",
    "Say something about the Moon.",
    "What is water made of?",
    "Name a fruit that is yellow.",
    "Why do birds fly south?",
    "Give a word that rhymes with cat.",
]
CONSTRAINTS = [
    ("End your answer with the word 'Done'.", {"kind": "end_with", "phrase": "Done"}),
    ("Start your answer with 'Answer:'.", {"kind": "start_with", "phrase": "Answer:"}),
    ("Use the keyword 'simple' in your answer.", {"kind": "include_keywords", "keywords": ["simple"]}),
    ("Wrap your whole answer in double quotes.", {"kind": "quotation"}),
]


def main() -> None:
    for kind in ("corpus", "chat", "pairs"):
        lines = (DATA / f"{kind}.jsonl").read_bytes().splitlines(keepends=True)[:N]  # bytes: one row is bad UTF-8
        (HERE / f"{kind}.jsonl").write_bytes(b"".join(lines))
    rows = []
    for i in range(N):
        text, constraint = CONSTRAINTS[i % len(CONSTRAINTS)]
        rows.append(
            {
                "id": f"tiny-prompt-{i:03d}",
                "prompt": f"{TASKS[i % len(TASKS)]} {text}",
                "meta": {"constraints": [constraint]},
            }
        )
    (HERE / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
