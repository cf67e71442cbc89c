"""`rayalign pas CONFIG.yaml`: prompt augmentation (Baichuan PAS) — one short complementary hint per prompt.

    rayalign pas rayjobs/configs/pas.yaml output=runs/pas

Pass 1 writes a hint (templates/pas_hint.txt): it supplements the prompt, never answers it, does
not extend the task, ≤ `max_words` words, same language. Rule checks then reject empty, too long
or other-script hints; pass 2, a critic (templates/pas_critique.txt), rejects hints that answer the
prompt, conflict with it or change its language. Every row comes out with a status; only
`accepted` rows carry a hint, and their `messages` have the hint appended to the prompt's last user
turn (`original` keeps the messages as they came in; the two are equal for rows without a hint),
so the output feeds the `sft` (kind chat) or `sample` (kind prompts) stage as is.
Input kind `prompts` (default) or `chat` (the hint goes to the last user turn).
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

from rayalign.data.schemas import MESSAGES
from rayalign.data.shards import ProcessResult
from rayalign.generate.common import (
    EngineProcessor,
    GenStageConfig,
    chat_requests,
    count_status,
    engine_for,
    first_text,
    run_gen_stage,
)
from rayalign.generate.engine import EngineConfig, SamplingParams
from rayalign.generate.pas_rules import augment, last_user, rule_check
from rayalign.generate.prompts import parse_hint, parse_verdict, prompt_text, template_version, user_turn
from rayalign.results import StageResult

PAS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", MESSAGES),
        ("meta", pa.string()),
        ("hint", pa.string()),
        ("original", MESSAGES),
        ("status", pa.string()),
        ("raw_hint", pa.string()),
        ("raw_critique", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


class PASConfig(GenStageConfig):
    kind: Literal["prompts", "chat"] = "prompts"  # input rows: prompts or chat
    params: SamplingParams = SamplingParams(max_tokens=64)  # sampling of the hints
    max_words: int = 30  # longest hint kept, in words
    critique: bool = True  # a critic judges each hint; rejected hints are dropped
    critic: EngineConfig | None = None  # None: the hint model critiques itself
    critique_params: SamplingParams = SamplingParams(max_tokens=32)  # sampling of the critic's verdict


class PASProcessor(EngineProcessor):
    cfg: PASConfig  # narrower than the base's GenStageConfig
    output_schema = PAS_SCHEMA

    def __init__(self, cfg: PASConfig):
        super().__init__(cfg)
        self.critic = engine_for(cfg.critic) if cfg.critic else self.engine
        self.version = f"{template_version('pas_hint')}+{template_version('pas_critique')}"

    def process(self, rows: list[dict]) -> ProcessResult:
        cfg = self.cfg
        prompts = [prompt_text(r["messages"][: last_user(r["messages"]) + 1]) for r in rows]
        params = cfg.params.model_copy(update={"n": 1})
        results = self.engine.generate(
            chat_requests([user_turn("pas_hint", prompt=p, max_words=str(cfg.max_words)) for p in prompts], params)
        )
        hints: list[str | None] = [None] * len(rows)
        status, raw_hint = [""] * len(rows), [""] * len(rows)
        for i, res in enumerate(results):
            raw, finish = first_text(res)
            raw_hint[i] = raw if res.ok else (res.error or "")
            if finish == "error":
                status[i] = "engine_error"
                continue
            hint, st = parse_hint(raw)
            st = rule_check(prompts[i], hint, cfg.max_words) if hint else st
            hints[i], status[i] = (hint, "pending") if st == "ok" else (None, st)
        raw_crit = [""] * len(rows)
        todo = [i for i in range(len(rows)) if status[i] == "pending"]
        if todo and cfg.critique:
            crit = self.critic.generate(
                chat_requests(
                    [user_turn("pas_critique", prompt=prompts[i], hint=hints[i] or "") for i in todo],
                    cfg.critique_params.model_copy(update={"n": 1}),
                )
            )
            for i, res in zip(todo, crit):
                raw, finish = first_text(res)
                raw_crit[i] = raw if res.ok else (res.error or "")
                if finish == "error":
                    status[i] = "critique_error"
                    continue
                accepted, st = parse_verdict(raw)
                status[i] = "critique_unparseable" if st != "ok" else ("accepted" if accepted else "rejected_by_critic")
        for i in todo:
            if status[i] == "pending":  # critique switched off: rule checks alone decide
                status[i] = "accepted"
        out: list[dict] = []
        stats: dict[str, float] = {}
        for i, r in enumerate(rows):
            count_status(stats, status[i])
            ok = status[i] == "accepted"
            out.append(
                {
                    "id": r["id"],
                    "messages": augment(r["messages"], hints[i]) if ok else r["messages"],
                    "meta": r["meta"],
                    "hint": hints[i] if ok else "",
                    "original": r["messages"],
                    "status": status[i],
                    "raw_hint": raw_hint[i],
                    "raw_critique": raw_crit[i],
                    "model": self.ecfg.model,
                    "prompt_version": self.version,
                }
            )
        return ProcessResult(out, [], stats)


def run_pas(cfg: PASConfig, log=print) -> StageResult:
    return run_gen_stage("pas", cfg, lambda: PASProcessor(cfg), kind=cfg.kind, log=log)
