"""A generator of hostile JSONL files: every row a user (or a broken exporter) could hand a stage.

`hostile_jsonl(kind, n)` returns the bytes of a file with at least `n` rows for one dataset kind:
every JSON type in every field, nulls, nesting thousands of levels deep, megabyte strings, raw and
escaped control characters, lone surrogates, duplicate keys, NaN/Infinity/overflowing numbers,
invalid UTF-8, non-object rows, OpenAI content parts (text and not), a byte-order mark at the start,
CRLF line ends on some lines, and a truncated last line. A sprinkling of valid rows keeps the good
path busy. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random

VALUES: list = [
    None,
    True,
    False,
    0,
    -1,
    2**70,
    1.5,
    -0.0,
    1e308,
    "",
    " \n\t",
    "x",
    "\u0000\u001f",
    "é😀",
    [],
    {},
    [None],
    [1, "a"],
    {"a": 1},
    {"role": "user"},
    [[[]]],
    [{"type": "text", "text": "hi"}],
]
RAW_VALUES = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    "[" * 3000 + "]" * 3000,
    '{"a":' * 2000 + "1" + "}" * 2000,
    "123456789" * 600,
]

GOOD = {
    "corpus": {"id": "good", "text": "A short clean document.", "meta": {"k": 1}},
    "chat": {"id": "good", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    "prompts": {"id": "good", "messages": [{"role": "user", "content": "Say hi."}]},
    "pairs": {"id": "good", "prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
}


def _random_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -7, 2**63, 3.25, -1e-300])
    if pick in (3, 4, 5):
        return "".join(rng.choice('ab \n\t\u0001\u00e9\u4e2d\U0001f600"\\') for _ in range(rng.randrange(12)))
    if pick in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["role", "content", "text", "id", "x", "type"]): _random_value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def _fields(kind: str) -> list[str]:
    return [*list(GOOD[kind]), "messages", "prompt", "text", "conversations", "instruction"]


def _structured(kind: str) -> list[str]:
    """Every value of VALUES and RAW_VALUES in every field, and in a message's role and content."""
    lines = []
    good = GOOD[kind]
    for field in _fields(kind):
        for v in VALUES:
            lines.append(json.dumps({**good, field: v}))
        for raw in RAW_VALUES:
            body = json.dumps({k: x for k, x in good.items() if k != field})
            lines.append(body[:-1] + (", " if len(body) > 2 else "") + f'"{field}": {raw}}}')
    for part in ("role", "content"):
        for v in VALUES:
            msg = {"role": "user", "content": "q", part: v}
            lines.append(json.dumps({**good, "messages": [msg, {"role": "assistant", "content": "a"}]}))
    return lines


def _special(kind: str) -> list[str]:
    good = json.dumps(GOOD[kind])
    return [
        good[:-1] + ', "id": "dup"}',  # duplicate key
        good.replace('"', "'"),  # single quotes: not JSON
        '{"text": "raw \x01 control \x7f"}',
        '{"text": "raw newline\ttab"}',
        json.dumps({**GOOD[kind], "text": "w " * 400_000, "prompt": "w " * 400_000}),  # megabyte strings
        json.dumps(
            {
                **GOOD[kind],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                ],
            }
        ),
        json.dumps(
            {
                **GOOD[kind],
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                    {"role": "assistant", "content": "c"},
                ],
            }
        ),
        "[1, 2, 3]",
        "42",
        '"a string"',
        "null",
        "true",
        "{}",
        "{",
        "}",
        "[",
        '{"id": }',
        "\x00",
        "\ufeff{}",
    ]


def hostile_lines(kind: str, n: int = 1000, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    lines = [s.encode("utf-8", "surrogatepass") for s in _structured(kind) + _special(kind)]
    lines += [b'{"text": "caf\xe9"}', b"\xff\xfe{}", b'{"id": "\xc3"}']  # invalid UTF-8
    while len(lines) < n:
        if rng.random() < 0.15:
            lines.append(json.dumps({**GOOD[kind], "id": f"good-{len(lines)}"}).encode())
            continue
        row = dict(GOOD[kind])
        for _ in range(rng.randrange(1, 3)):
            row[rng.choice(_fields(kind))] = _random_value(rng)
        lines.append(json.dumps(row, ensure_ascii=rng.random() < 0.5).encode())
    rng.shuffle(lines)
    return lines


def hostile_jsonl(kind: str, n: int = 1000, seed: int = 0) -> bytes:
    """File bytes: BOM first, CRLF on every third line, and a last line cut off mid-row."""
    lines = hostile_lines(kind, n, seed)
    body = b"".join(ln + (b"\r\n" if i % 3 == 0 else b"\n") for i, ln in enumerate(lines))
    return b"\xef\xbb\xbf" + body + json.dumps(GOOD[kind]).encode()[:-7]


def count_rows(data: bytes) -> int:
    """Rows a reader must account for: non-blank lines (the BOM is not content)."""
    return sum(1 for ln in data.removeprefix(b"\xef\xbb\xbf").split(b"\n") if ln.strip())
