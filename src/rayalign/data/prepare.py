"""`rayalign prepare CONFIG.yaml`: read → validate → tokenise → pack → parquet shards + manifest.

    rayalign prepare rayjobs/configs/prepare_chat.yaml output=runs/chat_packed

Output rows (packed kinds `corpus`, `chat`): input_ids, labels, position_ids, seq_lens, doc_ids,
num_tokens, num_targets — ready for the training loop. `pairs` rows keep their text and add the
token ids of prompt, chosen and rejected; `prompts` rows are validated and normalised.
"""

from __future__ import annotations

from typing import Literal

from rayalign.config import Cfg
from rayalign.data.formats import Format
from rayalign.data.packing import pack, packing_efficiency
from rayalign.data.schemas import PACKED_SCHEMA, PAIR_TOKEN_SCHEMA, SCHEMAS
from rayalign.data.shards import PoolConfig, ProcessResult, quarantine_row, run_sharded
from rayalign.data.tokenize import TemplateError, Tokenized, pair_ids, tokenize_chats, tokenize_texts
from rayalign.results import StageResult


class PrepareConfig(Cfg):
    """What to prepare and how.

    Two lengths, two meanings: `max_length` limits ONE document (a text, a chat, a prompt plus its
    longer response) before packing — longer ones follow `overlength`; `seq_len` is the length of
    one PACKED training row, which holds several documents (so `seq_len` ≥ `max_length`).
    `format` names the input rows' format (see `rayalign.data.formats`); `auto` detects it per row.
    """

    # corpus (text), chat (messages), prompts (no tokens), pairs (prompt, chosen, rejected)
    kind: Literal["corpus", "chat", "prompts", "pairs"]
    inputs: list[str]  # JSONL / parquet / arrow files, folders or globs (local or object storage)
    output: str  # the dataset folder (parquet shards + manifest.json)
    format: Format = "auto"  # input rows' format (rayalign.data.formats); auto: detected per row
    model: str = "builtin:smollm2-135m-instruct"  # whose tokenizer and chat template to use
    max_length: int = 1024  # per document, in tokens
    # a longer document: cut to max_length, or quarantined with its reason
    overlength: Literal["truncate", "quarantine"] = "quarantine"
    pack: bool = True  # corpus/chat only
    seq_len: int = 1024  # per packed row, in tokens (≥ max_length)
    pool: PoolConfig = PoolConfig()  # actor pool (Ray Data) that tokenises the shards


class PrepareProcessor:
    def __init__(self, cfg: PrepareConfig):
        from rayalign.models.loader import load_tokenizer

        self.cfg = cfg
        self.input_format = cfg.format  # read by the shard runner when it adapts rows
        self.tok = load_tokenizer(cfg.model)
        # corpus and chat rows have the packed layout whether packed or one document per row
        token_kinds = {"corpus": PACKED_SCHEMA, "chat": PACKED_SCHEMA, "pairs": PAIR_TOKEN_SCHEMA}
        self.output_schema = token_kinds.get(cfg.kind, SCHEMAS[cfg.kind])

    def _fit(self, t: Tokenized) -> tuple[Tokenized | None, str]:
        """Apply the over-length policy; returns (sample or None, detail)."""
        n, limit = len(t), self.cfg.max_length
        if n <= limit:
            return t, ""
        if self.cfg.overlength == "quarantine":
            return None, f"{n} tokens > max_length {limit}; raise max_length or set overlength: truncate"
        t = Tokenized(t.input_ids[:limit], t.labels[:limit])
        if t.num_targets == 0:
            return None, f"{n} tokens > max_length {limit} and truncation leaves no target token"
        return t, ""

    def process(self, rows: list[dict]) -> ProcessResult:
        stats: dict[str, float] = {"tokens": 0, "targets": 0, "truncated": 0}
        if self.cfg.kind == "prompts":  # validated and normalised is all a prompt needs
            return ProcessResult(rows, [], stats)
        if self.cfg.kind == "pairs":
            return self._pairs(rows, stats)
        return self._documents(rows, stats)

    def _reject(self, row: dict, code: str, detail: str) -> dict:
        return quarantine_row("prepare", row["_index"], code, detail, row["id"])

    def _pairs(self, rows: list[dict], stats: dict[str, float]) -> ProcessResult:
        out, quarantine = [], []
        for row in rows:
            try:
                p = pair_ids(self.tok, row)
            except TemplateError as e:
                quarantine.append(self._reject(row, "template_error", str(e)))
                continue
            longest = len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"]))
            if longest > self.cfg.max_length:
                quarantine.append(
                    self._reject(row, "over_length", f"{longest} tokens > max_length {self.cfg.max_length}")
                )
                continue
            out.append({**row, **p})
            stats["tokens"] += longest
        return ProcessResult(out, quarantine, stats)

    def _documents(self, rows: list[dict], stats: dict[str, float]) -> ProcessResult:
        """corpus / chat: one batched tokenizer call per shard (the Rust tokenizer does the loop), then pack."""
        if self.cfg.kind == "corpus":
            batch: list = tokenize_texts(self.tok, [r["text"] for r in rows])
        else:
            batch = tokenize_chats(self.tok, [r["messages"] for r in rows])
        quarantine, samples, ids = [], [], []
        for row, t in zip(rows, batch):
            if isinstance(t, TemplateError):
                quarantine.append(self._reject(row, "template_error", str(t)))
                continue
            if self.cfg.kind == "chat" and t.num_targets == 0:
                quarantine.append(self._reject(row, "no_assistant_turn", "no assistant token survives tokenisation"))
                continue
            fitted, detail = self._fit(t)
            if fitted is None:
                quarantine.append(self._reject(row, "over_length", detail))
                continue
            stats["truncated"] += int(len(fitted) < len(t))
            samples.append(fitted)
            ids.append(row["id"])
            stats["tokens"] += len(fitted)
            stats["targets"] += fitted.num_targets
        out = self._rows(samples, ids, stats)
        stats["rows"] = len(out)
        return ProcessResult(out, quarantine, stats)

    def _rows(self, samples: list[Tokenized], ids: list[str], stats: dict[str, float]) -> list[dict]:
        if self.cfg.pack:
            packed = pack(samples, self.cfg.seq_len, self.tok.pad_token_id, ids)
            stats["slots"] = len(packed) * self.cfg.seq_len
            return [r.as_dict() for r in packed]
        stats["slots"] = stats["tokens"]
        return [
            {
                "input_ids": s.input_ids,
                "labels": s.labels,
                "position_ids": list(range(len(s))),
                "seq_lens": [len(s)],
                "doc_ids": [i],
                "num_tokens": len(s),
                "num_targets": s.num_targets,
            }
            for s, i in zip(samples, ids)
        ]


def run_prepare(cfg: PrepareConfig, log=print) -> StageResult:
    """Prepare `cfg.inputs` into `cfg.output`; returns counts, packing efficiency and the manifest path."""
    if cfg.kind in ("corpus", "chat") and cfg.pack and cfg.seq_len < cfg.max_length:
        from rayalign.config import ConfigError

        raise ConfigError(
            f"seq_len ({cfg.seq_len}, tokens per packed row) must be ≥ max_length "
            f"({cfg.max_length}, tokens per document) so every document fits a row"
        )
    manifest = run_sharded(
        "prepare",
        cfg.inputs,
        cfg.output,
        lambda: PrepareProcessor(cfg),
        kind=cfg.kind,
        pool=cfg.pool,
        config_hash=cfg.hash(),
        extra={"kind": cfg.kind, "model": cfg.model},
        log=log,
    )
    st = manifest.stats
    metrics: dict[str, float] = {}
    if st.get("slots"):
        metrics["packing_efficiency"] = st["tokens"] / st["slots"]
    manifest.log_counts(log)
    if metrics:
        log(f"    packing efficiency {metrics['packing_efficiency']:.3f}  ({int(st['tokens'])} tokens)")
    return manifest.to_result(cfg.output, metrics, kind=cfg.kind, model=cfg.model)


__all__ = ["PrepareConfig", "PrepareProcessor", "run_prepare", "packing_efficiency", "PACKED_SCHEMA"]
