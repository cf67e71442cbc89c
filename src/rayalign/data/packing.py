"""Sequence packing: tokenised samples into fixed-length rows that never mix documents.

Each packed row carries `position_ids` that restart at 0 for every document. Hugging Face models
given `position_ids` and no attention mask build a document-masked causal mask from those resets
(SDPA / eager on CPU) and flash-attention varlen kernels use them on GPU, so attention never crosses
documents. The first token of each document gets label -100, so no loss term predicts one
document from the previous one. The padding tail is its own "document" with labels -100.

Bins are filled first-fit-decreasing, which wastes fewer slots than greedy concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rayalign.data.tokenize import IGNORE, Tokenized


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_lens: list[int]  # lengths of the real documents, in order (padding excluded)
    doc_ids: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens)

    def as_dict(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
            "seq_lens": self.seq_lens,
            "doc_ids": self.doc_ids,
            "num_tokens": self.num_tokens,
            "num_targets": sum(1 for x in self.labels if x != IGNORE),
        }


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length ≤ capacity (every length must fit alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the packing length {capacity}")
        for b, free in enumerate(space):
            if n <= free:
                bins[b].append(i)
                space[b] -= n
                break
        else:
            bins.append([i])
            space.append(capacity - n)
    for group in bins:
        group.sort()  # keep source order inside a row: deterministic and readable
    return bins


def pack(samples: list[Tokenized], seq_len: int, pad_id: int, ids: list[str] | None = None) -> list[PackedRow]:
    ids = ids or [str(i) for i in range(len(samples))]
    rows = []
    for group in first_fit_decreasing([len(s) for s in samples], seq_len):
        inp, lab, pos, lens, docs = [], [], [], [], []
        for i in group:
            s = samples[i]
            inp += s.input_ids
            lab += [IGNORE, *s.labels[1:]]
            pos += list(range(len(s)))
            lens.append(len(s))
            docs.append(ids[i])
        pad = seq_len - len(inp)
        inp += [pad_id] * pad
        lab += [IGNORE] * pad
        pos += list(range(pad))
        rows.append(PackedRow(inp, lab, pos, lens, docs))
    return rows


def packing_efficiency(rows: list[PackedRow], seq_len: int) -> float:
    """Real tokens / slots."""
    return sum(r.num_tokens for r in rows) / max(1, len(rows) * seq_len)
