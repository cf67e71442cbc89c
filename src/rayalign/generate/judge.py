"""`rayalign judge CONFIG.yaml`: the LLM-as-judge baseline for preference pairs.

    rayalign judge rayjobs/configs/judge.yaml output=runs/judge

For each prompt the policy samples two responses (`params.n` is forced to 2); a judge model
(`judge_engine`, by default the policy itself) picks the better one (templates/judge.txt). With
`swap: true` (default) the judge sees both orders and only a consistent verdict makes a pair, which
cancels the judge's position bias. `data/` holds pairs (chosen = the judged-better response) in the
`pairs` schema plus status, verdict, judge_raw, model, judge_model, prompt_version; identical
responses, unparseable or inconsistent verdicts and engine errors go to quarantine/ with their
status as the reason, so in = pairs + quarantined.
"""

from __future__ import annotations

import pyarrow as pa

from rayalign.data.schemas import SCHEMAS
from rayalign.data.shards import ProcessResult
from rayalign.generate.common import (
    EngineProcessor,
    GenStageConfig,
    chat_requests,
    count_status,
    engine_for,
    first_text,
    quarantine,
    run_gen_stage,
)
from rayalign.generate.engine import EngineConfig, SamplingParams
from rayalign.generate.prompts import parse_judgement, prompt_text, template_version, user_turn
from rayalign.results import StageResult

JUDGE_SCHEMA = pa.schema(
    [
        *list(SCHEMAS["pairs"]),
        ("status", pa.string()),
        ("verdict", pa.string()),
        ("judge_raw", pa.string()),
        ("model", pa.string()),
        ("judge_model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


class JudgeConfig(GenStageConfig):
    # sampling of the candidates: n answers per prompt
    params: SamplingParams = SamplingParams(temperature=0.8, top_p=0.95, n=2, max_tokens=256, seed=0)
    judge_engine: EngineConfig | None = None  # the judge's engine (None: the stage's engine)
    judge_params: SamplingParams = SamplingParams(max_tokens=16)  # sampling of the judge's verdict
    swap: bool = True  # judge each pair in both orders (position bias cancels)


def combine(first: str | None, swapped: str | None, swap: bool) -> tuple[str | None, str]:
    """Verdicts → ("A"/"B" meaning which original response wins, status).

    `swapped` is the verdict with the responses shown in the other order, so its letter is flipped
    back before comparing: A then B (consistent A) → "A"; A then A → inconsistent.
    """
    if first is None:
        return None, "judge_unparseable"
    if not swap:
        return first, "judged"
    if swapped is None:
        return None, "judge_unparseable"
    back = {"A": "B", "B": "A"}[swapped]
    return (first, "judged") if back == first else (None, "inconsistent")


class JudgeProcessor(EngineProcessor):
    cfg: JudgeConfig  # narrower than the base's GenStageConfig
    output_schema = JUDGE_SCHEMA

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        self.jcfg = cfg.judge_engine or self.ecfg
        self.judge = engine_for(self.jcfg)
        self.version = template_version("judge")

    def process(self, rows: list[dict]) -> ProcessResult:
        """Two samples per prompt, then one judge call per pair (both orders with `swap`). Kept in
        one function: the two engine passes share the per-row bookkeeping of what is still open."""
        cfg = self.cfg
        samples = self.engine.generate(
            chat_requests([r["messages"] for r in rows], cfg.params.model_copy(update={"n": 2}))
        )
        todo, quarantined = [], []
        stats: dict[str, float] = {}

        def drop(r, status, detail, extra=None):
            count_status(stats, status)
            quarantined.append(quarantine("judge", r["_index"], status, detail, {"id": r["id"], **(extra or {})}))

        for r, res in zip(rows, samples):
            if not res.ok:
                drop(r, "engine_error", res.error or "", {"prompt": r["messages"]})
            elif " ".join(res.texts[0].split()) == " ".join(res.texts[1].split()):
                drop(r, "identical", "both samples are the same text", {"response": res.texts[0]})
            elif not res.texts[0].strip() or not res.texts[1].strip():
                drop(r, "empty_sample", "a sampled response is empty", {"responses": res.texts})
            else:
                todo.append((r, res.texts[0], res.texts[1]))
        reqs = []
        for r, a, b in todo:
            p = prompt_text(r["messages"])
            reqs.append(user_turn("judge", prompt=p, response_a=a, response_b=b))
            if cfg.swap:
                reqs.append(user_turn("judge", prompt=p, response_a=b, response_b=a))
        verdicts = (
            self.judge.generate(chat_requests(reqs, cfg.judge_params.model_copy(update={"n": 1}))) if reqs else []
        )
        step = 2 if cfg.swap else 1
        out = []
        for k, (r, a, b) in enumerate(todo):
            raws = [first_text(v) for v in verdicts[k * step : (k + 1) * step]]
            if any(f == "error" for _, f in raws):
                drop(r, "judge_error", "the judge request failed", {"responses": [a, b]})
                continue
            parsed = [parse_judgement(t)[0] for t, _ in raws]
            winner, status = combine(parsed[0], parsed[1] if cfg.swap else None, cfg.swap)
            judge_raw = " || ".join(t for t, _ in raws)
            if winner is None:
                drop(r, status, judge_raw, {"responses": [a, b], "judge_raw": judge_raw})
                continue
            count_status(stats, status)
            chosen, rejected = (a, b) if winner == "A" else (b, a)
            out.append(
                {
                    "id": r["id"],
                    "prompt": r["messages"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "meta": r["meta"],
                    "status": status,
                    "verdict": winner,
                    "judge_raw": judge_raw,
                    "model": self.ecfg.model,
                    "judge_model": self.jcfg.model,
                    "prompt_version": self.version,
                }
            )
        return ProcessResult(out, quarantined, stats)


def run_judge(cfg: JudgeConfig, log=print) -> StageResult:
    return run_gen_stage("judge", cfg, lambda: JudgeProcessor(cfg), kind="prompts", log=log)
