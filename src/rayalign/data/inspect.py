"""`rayalign inspect FILE`: what a data file holds and how rayalign will train on it.

    rayalign inspect data/train.jsonl
    rayalign inspect data/saved_dataset/ --kind pairs --format trl --model ./my-model

Prints the detected row format and dataset kind, row counts by status (ok, or the quarantine
reason each bad row would get from `prepare`'s reading and validation), and three example rows as
they will be trained: rendered with the model's chat template, with the trained (assistant)
spans between ⟦ and ⟧. Reads at most `--limit` rows (default 10,000). Exit code 2 on a file
error.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from rayalign.data.formats import FORMATS, detect_row, normalise
from rayalign.data.readers import DataError, RawRow, expand_inputs, read_rows
from rayalign.data.schemas import KINDS

OPEN, CLOSE = "⟦", "⟧"


def guess_kind(raw: Any) -> str:
    """The dataset kind a row's keys suggest (the `--kind` default)."""
    if not isinstance(raw, dict):
        return "chat"
    if "text" in raw and not {"messages", "conversations", "prompt"} & raw.keys():
        return "corpus"
    if {"chosen", "rejected", "preferred_output"} & raw.keys():
        return "pairs"
    if {"completion", "output", "label"} & raw.keys():
        return "chat"
    turns = raw.get("messages", raw.get("conversations"))
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
        last = turns[-1].get("role", turns[-1].get("from"))
        return "chat" if last in ("assistant", "gpt") else "prompts"
    return "prompts"


def render_example(tok: Any, kind: str, row: dict) -> str:
    """One normalised row as the trainer sees it (trained spans marked)."""
    from rayalign.data.tokenize import assistant_char_spans, render

    if kind == "corpus":
        return f"{OPEN}{row['text']}{tok.eos_token or ''}{CLOSE}"
    if kind == "prompts":
        return render(tok, row["messages"], add_generation_prompt=True)
    if kind == "pairs":
        prompt = render(tok, row["prompt"], add_generation_prompt=True)
        return f"{prompt}\n  chosen:   {OPEN}{row['chosen']}{CLOSE}\n  rejected: {OPEN}{row['rejected']}{CLOSE}"
    text, spans = assistant_char_spans(tok, row["messages"])
    out, at = [], 0
    for start, end in spans:
        out += [text[at:start], OPEN, text[start:end], CLOSE]
        at = end
    return "".join([*out, text[at:]])


def survey(files: list[str], kind: str | None, fmt: str, limit: int) -> dict:
    """Detected format and kind, counts by status and the first good rows of the first `limit` rows."""
    raws: list[RawRow] = []
    for path in files:
        for raw in read_rows(path, limit=limit - len(raws)):
            raws.append(raw)
        if len(raws) >= limit:
            break
    values = [r.value for r in raws if r.error is None]
    detected = Counter(detect_row(v) for v in values).most_common(1)
    kind = kind or (Counter(guess_kind(v) for v in values).most_common(1) or [("chat", 0)])[0][0]
    status: Counter = Counter()
    good: list[dict] = []
    for r in raws:
        row, reason = (None, r.error) if r.error else normalise(kind, r.value, fmt, default_id=str(r.index))
        status[reason.code if reason else "ok"] += 1
        if row is not None and len(good) < 3:
            good.append(row)
    return {
        "format": fmt if fmt != "auto" else (detected[0][0] if detected else "unknown"),
        "kind": kind,
        "rows": len(raws),
        "status": status,
        "examples": good,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rayalign inspect", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a data file or folder (jsonl, json, parquet, a save_to_disk folder), local or URI")
    ap.add_argument("--kind", choices=KINDS, help="dataset kind (default: guessed from the rows)")
    ap.add_argument("--format", default="auto", choices=FORMATS, help="row format (default: detected per row)")
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="whose chat template renders examples")
    ap.add_argument("--limit", type=int, default=10_000, help="rows to read at most")
    args = ap.parse_args(argv)
    try:
        files = expand_inputs([args.path])
        report = survey(files, args.kind, args.format, args.limit)
    except (DataError, FileNotFoundError) as e:
        print(f"rayalign inspect: {e}", file=sys.stderr)
        return 2
    print(f"{args.path}: {len(files)} file(s), {report['rows']} row(s) read")
    print(f"format: {report['format']}   kind: {report['kind']}")
    ok = report["status"].pop("ok", 0)
    print(f"ok {ok}, quarantined {sum(report['status'].values())}")
    for reason, n in sorted(report["status"].items(), key=lambda x: (-x[1], x[0])):
        print(f"    {n:6d}  {reason}")
    if report["examples"]:
        from rayalign.models.loader import load_tokenizer

        tok = load_tokenizer(args.model)
        for i, row in enumerate(report["examples"], start=1):
            print(f"--- example {i} (id {row['id']}) ---")
            print(render_example(tok, report["kind"], row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
