"""`rayalign rewrite CONFIG.yaml`: native alignment of a pretraining corpus (Liang et al. 2024).

    rayalign rewrite rayjobs/configs/rewrite.yaml output=runs/rewrite

An aligned model rewrites each document under a polishing rubric (templates/rewrite.txt): output
unchanged when clean; keep language and information (no summarising); fix unsafe, unethical,
discriminatory or wrong parts; stay neutral; fix fluency; Markdown/LaTeX where useful.

Output rows keep the corpus columns (id, text, meta) so `pretrain` reads them directly, plus
original, rewritten, status, length_ratio, finish_reason, raw, model, prompt_version. `text` is the
rewrite only when it is trustworthy (status rewritten or unchanged); otherwise it is the original
and the status says why: a rewrite whose length ratio leaves [min_ratio, max_ratio] dropped or
invented content, a truncated one ran out of tokens — marked, never silently used.

`messages` holds each trusted row as a chat example (user: the rubric prompt with the original;
assistant: the rewrite, or [UNCHANGED]), null for untrusted rows — so this stage's `data/` is SFT
input for a small "alignment worker" that then rewrites the rest of the corpus cheaply
(rayjobs/configs/rewrite_scaleout.yaml; `prepare` quarantines the null rows with a count).
"""

from __future__ import annotations

import pyarrow as pa

from rayalign.data.schemas import MESSAGES
from rayalign.data.shards import ProcessResult
from rayalign.generate.common import EngineProcessor, GenStageConfig, count_status, first_text, run_gen_stage
from rayalign.generate.engine import GenRequest, SamplingParams
from rayalign.generate.prompts import parse_rewrite, template_version, user_turn
from rayalign.results import StageResult

REWRITE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("meta", pa.string()),
        ("original", pa.string()),
        ("rewritten", pa.string()),
        ("status", pa.string()),
        ("length_ratio", pa.float64()),
        ("finish_reason", pa.string()),
        ("raw", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        (
            "messages",
            MESSAGES,
        ),  # (original → rewrite) as a chat example for training a rewrite worker; null if untrusted
    ]
)
TRUSTED = ("rewritten", "unchanged")


class RewriteConfig(GenStageConfig):
    params: SamplingParams = SamplingParams(max_tokens=1024)  # sampling of the rewrites
    min_ratio: float = 0.6  # rewritten/original characters below this: content was dropped
    max_ratio: float = 1.8  # above this: content was invented
    max_expand: float = 2.0  # per-document max_tokens = min(params.max_tokens, expand × doc tokens + 32)


def judge_rewrite(original: str, raw: str, finish: str, min_ratio: float, max_ratio: float) -> tuple[str, str, float]:
    """→ (rewritten, status, length ratio) for one reply; pure, so tests feed it any reply."""
    if finish == "error":
        return "", "engine_error", 0.0
    if finish == "length":
        return raw, "truncated", len(raw) / max(len(original), 1)
    text, parsed = parse_rewrite(raw)
    if parsed == "unchanged":
        return original, "unchanged", 1.0
    if text is None:
        return "", parsed, 0.0
    ratio = len(text) / max(len(original), 1)
    if " ".join(text.split()) == " ".join(original.split()):
        return original, "unchanged", 1.0
    if ratio < min_ratio:
        return text, "too_short", ratio
    if ratio > max_ratio:
        return text, "too_long", ratio
    return text, "rewritten", ratio


class RewriteProcessor(EngineProcessor):
    cfg: RewriteConfig  # narrower than the base's GenStageConfig
    output_schema = REWRITE_SCHEMA

    def __init__(self, cfg: RewriteConfig):
        super().__init__(cfg)
        self.version = template_version("rewrite")

    def process(self, rows: list[dict]) -> ProcessResult:
        cfg, reqs = self.cfg, []
        for r in rows:
            n_doc = self.engine.count_tokens(prompt=r["text"])
            budget = min(cfg.params.max_tokens, int(cfg.max_expand * n_doc) + 32)
            reqs.append(
                GenRequest(
                    messages=user_turn("rewrite", document=r["text"]),
                    params=cfg.params.model_copy(update={"max_tokens": budget, "n": 1}),
                    request_id=r["id"],
                )
            )
        out: list[dict] = []
        stats: dict[str, float] = {}
        for r, req, res in zip(rows, reqs, self.engine.generate(reqs)):
            raw, finish = first_text(res)
            rewritten, status, ratio = judge_rewrite(r["text"], raw, finish, cfg.min_ratio, cfg.max_ratio)
            count_status(stats, status)
            target = "[UNCHANGED]" if status == "unchanged" else rewritten
            example = [*(req.messages or []), {"role": "assistant", "content": target}] if status in TRUSTED else None
            out.append(
                {
                    "id": r["id"],
                    "text": rewritten if status in TRUSTED else r["text"],
                    "meta": r["meta"],
                    "original": r["text"],
                    "rewritten": rewritten,
                    "status": status,
                    "length_ratio": ratio,
                    "finish_reason": finish,
                    "raw": raw if res.ok else (res.error or ""),
                    "model": self.ecfg.model,
                    "prompt_version": self.version,
                    "messages": example,
                }
            )
        return ProcessResult(out, [], stats)


def run_rewrite(cfg: RewriteConfig, log=print) -> StageResult:
    return run_gen_stage(
        "rewrite",
        cfg,
        lambda: RewriteProcessor(cfg),
        kind="corpus",
        extra={"prompt_version": template_version("rewrite")},
        log=log,
    )
