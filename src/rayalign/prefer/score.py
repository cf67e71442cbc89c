"""`rayalign score CONFIG.yaml`: a reward for every (prompt, response) row, from a trained reward model.

    rayalign score rayjobs/configs/reward_score_tiny.yaml   # or: python rayjobs/score.py CONFIG.yaml

A sharded Ray Data pass (`run_sharded`, an actor pool holding the reward model). Input kinds:
- ``responses``: rows with ``prompt`` (a string or a message list) or ``messages``, and ``response``
  → adds ``reward``;
- ``chat``: conversations whose last turn is the assistant's → ``reward`` of that turn;
- ``pairs``: → ``reward_chosen``, ``reward_rejected``, ``reward_margin``.
Bad rows are quarantined with their reason (in = ok + quarantined), as in every dataset stage.
"""

from __future__ import annotations

import json
from typing import Literal

from rayalign.config import Cfg
from rayalign.data.shards import PoolConfig, ProcessResult, quarantine_row, run_sharded
from rayalign.results import StageResult


class ScoreConfig(Cfg):
    resource_fields = frozenset({"batch_size", "pool"})

    inputs: list[str]  # rows to score: files or folders
    output: str  # the dataset folder: the rows with their rewards
    model: str  # a reward-model folder written by `rayalign reward` (its `checkpoint`)
    # responses (prompt + response), chat (last assistant turn) or pairs (chosen and rejected)
    kind: Literal["responses", "chat", "pairs"] = "responses"
    max_length: int = 1024  # tokens per scored sequence; longer rows are quarantined
    batch_size: int = 16  # sequences per forward
    pool: PoolConfig = PoolConfig()  # actor pool holding the reward model


def _response_row(raw: dict, default_id: str) -> tuple[dict | None, tuple[str, str] | None]:
    """Validate a (prompt, response) row with the pairs kind's own rules for prompts and responses."""
    from rayalign.data.schemas import RowError, _id, _meta, _prompt_messages, _response

    if not isinstance(raw, dict):
        return None, ("not_an_object", f"row must be a JSON object, got {type(raw).__name__}")
    try:
        return {
            "id": _id(raw, default_id),
            "prompt": _prompt_messages(raw),
            "response": _response(raw, "response"),
            "meta": _meta(raw),
        }, None
    except RowError as e:
        return None, (e.reason.code, e.reason.detail)


class ScoreProcessor:
    output_schema = None  # input columns pass through; the reward columns are added

    def __init__(self, cfg: ScoreConfig):
        import torch

        from rayalign.models.loader import load_tokenizer, resolve_model_path
        from rayalign.objectives.accuracy import load_reward_model

        self.cfg = cfg
        self.device = "cuda" if cfg.pool.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.tok = load_tokenizer(cfg.model)
        self.model = load_reward_model(resolve_model_path(cfg.model)).to(self.device)

    def _sequences(self, row: dict) -> list[tuple[list[int], list[int]]]:
        from rayalign.data.tokenize import tokenize_pair

        if self.cfg.kind == "pairs":
            p = tokenize_pair(self.tok, row["prompt"], row["chosen"], row["rejected"])
            return [(p["prompt_ids"], p["chosen_ids"]), (p["prompt_ids"], p["rejected_ids"])]
        if self.cfg.kind == "chat":
            prompt, response = row["messages"][:-1], row["messages"][-1]["content"]
        else:
            prompt, response = row["prompt"], row["response"]
        # the pair tokeniser with the response on both sides: prompt ids + the ids the response adds
        p = tokenize_pair(self.tok, prompt, response, response)
        return [(p["prompt_ids"], p["chosen_ids"])]

    def _check(self, row: dict, index: int) -> list | dict:
        """The row's (prompt ids, response ids) sequences, or its quarantine row."""
        from rayalign.data.tokenize import TemplateError

        if self.cfg.kind == "chat" and row["messages"][-1]["role"] != "assistant":
            return quarantine_row(
                "score",
                index,
                "no_assistant_turn",
                "the conversation must end with the assistant turn to score",
                row["id"],
            )
        if self.cfg.kind == "chat" and len(row["messages"]) < 2:
            return quarantine_row("score", index, "no_user_turn", "no prompt before the assistant turn", row["id"])
        try:
            seqs = self._sequences(row)
        except TemplateError as e:
            return quarantine_row("score", index, "template_error", str(e), row["id"])
        longest = max(len(p) + len(y) for p, y in seqs)
        if longest > self.cfg.max_length:
            return quarantine_row(
                "score", index, "over_length", f"{longest} tokens > max_length {self.cfg.max_length}", row["id"]
            )
        return seqs

    def process(self, rows: list[dict]) -> ProcessResult:
        import torch

        from rayalign.objectives.pairs import collate_sequences, sequence_rewards

        good: list[dict] = []
        seqs: list[list[tuple[list[int], list[int]]]] = []
        quarantine = []
        for i, raw in enumerate(rows):
            index = raw.pop("_index", i) if isinstance(raw, dict) else i
            row, reason = (raw, None) if self.cfg.kind != "responses" else _response_row(raw, f"row-{index}")
            if row is None:
                code, detail = reason or ("unknown", "")
                quarantine.append(quarantine_row("score", index, code, detail, json.dumps(raw, default=str)))
                continue
            row_seqs = self._check(row, index)
            if isinstance(row_seqs, dict):
                quarantine.append(row_seqs)
                continue
            good.append(row)
            seqs.append(row_seqs)
        flat = [s for row_seqs in seqs for s in row_seqs]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][0]) + len(flat[i][1]))
        rewards = [0.0] * len(flat)
        with torch.inference_mode():
            for start in range(0, len(order), self.cfg.batch_size):
                idx = order[start : start + self.cfg.batch_size]
                batch = collate_sequences([flat[i][0] for i in idx], [flat[i][1] for i in idx], self.tok.pad_token_id)
                scores = sequence_rewards(self.model, {k: v.to(self.device) for k, v in batch.items()}).cpu().tolist()
                for i, s in zip(idx, scores):
                    rewards[i] = s
        pos = 0
        for row, row_seqs in zip(good, seqs):
            if self.cfg.kind == "pairs":
                row.update(
                    reward_chosen=rewards[pos],
                    reward_rejected=rewards[pos + 1],
                    reward_margin=rewards[pos] - rewards[pos + 1],
                )
            else:
                row["reward"] = rewards[pos]
            pos += len(row_seqs)
        stats = {"scored": float(len(flat))}
        if self.cfg.kind == "pairs":
            stats["chosen_wins"] = float(sum(r["reward_margin"] > 0 for r in good))
        return ProcessResult(good, quarantine, stats)


def run_score(cfg: ScoreConfig, log=print) -> StageResult:
    kind = None if cfg.kind == "responses" else cfg.kind  # responses rows are validated by the processor
    manifest = run_sharded(
        "score",
        cfg.inputs,
        cfg.output,
        lambda: ScoreProcessor(cfg),
        kind=kind,
        pool=cfg.pool,
        config_hash=cfg.hash(),
        extra={"kind": cfg.kind, "model": cfg.model},
        log=log,
    )
    result = manifest.to_result(cfg.output, kind=cfg.kind, model=cfg.model)
    manifest.log_counts(log, "scored rows")
    c = manifest.counts
    if cfg.kind == "pairs" and c.out_rows:
        result.metrics["chosen_win_rate"] = result.metrics.get("chosen_wins", 0.0) / c.out_rows
        log(f"[score] reward model prefers the chosen response in {result.metrics['chosen_win_rate']:.3f} of pairs")
    return result
