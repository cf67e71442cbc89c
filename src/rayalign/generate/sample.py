"""`rayalign sample CONFIG.yaml`: n on-policy responses per prompt from the current model.

    rayalign sample rayjobs/configs/sample.yaml output=runs/sample

One output row per (prompt, sample): id ``<prompt id>-s<k>``, prompt_id, messages, meta, response,
sample_index, finish_reason, completion_tokens, status (ok | truncated | empty | engine_error, with
the engine's message in `error`), model. These rows are the input of `clair` (``inputs:
[runs/sample/data]``); a prompt whose request failed still yields its n rows, marked engine_error.
"""

from __future__ import annotations

import pyarrow as pa

from rayalign.data.schemas import MESSAGES
from rayalign.data.shards import ProcessResult
from rayalign.generate.common import EngineProcessor, GenStageConfig, chat_requests, count_status, run_gen_stage
from rayalign.generate.engine import SamplingParams
from rayalign.results import StageResult

SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("meta", pa.string()),
        ("response", pa.string()),
        ("sample_index", pa.int32()),
        ("finish_reason", pa.string()),
        ("completion_tokens", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("model", pa.string()),
    ]
)


class SampleConfig(GenStageConfig):
    # sampling: n answers per prompt
    params: SamplingParams = SamplingParams(temperature=0.7, top_p=0.95, n=2, max_tokens=256, seed=0)


def sample_status(text: str, finish: str) -> str:
    if finish == "error":
        return "engine_error"
    if not text.strip():
        return "empty"
    return "truncated" if finish == "length" else "ok"


class SampleProcessor(EngineProcessor):
    cfg: SampleConfig  # narrower than the base's GenStageConfig
    output_schema = SAMPLE_SCHEMA

    def __init__(self, cfg: SampleConfig):
        super().__init__(cfg)

    def process(self, rows: list[dict]) -> ProcessResult:
        n = self.cfg.params.n
        results = self.engine.generate(
            chat_requests([r["messages"] for r in rows], self.cfg.params, [r["id"] for r in rows])
        )
        out: list[dict] = []
        stats: dict[str, float] = {}
        for r, res in zip(rows, results):
            for k in range(n):
                text = res.texts[k] if res.ok else ""
                finish = res.finish_reasons[k] if res.ok else "error"
                status = sample_status(text, finish)
                count_status(stats, status)
                out.append(
                    {
                        "id": f"{r['id']}-s{k}",
                        "prompt_id": r["id"],
                        "messages": r["messages"],
                        "meta": r["meta"],
                        "response": text,
                        "sample_index": k,
                        "finish_reason": finish,
                        "completion_tokens": res.completion_tokens[k] if res.ok else 0,
                        "status": status,
                        "error": res.error or "",
                        "model": self.ecfg.model,
                    }
                )
        stats["completion_tokens"] = sum(o["completion_tokens"] for o in out)
        return ProcessResult(out, [], stats)


def run_sample(cfg: SampleConfig, log=print) -> StageResult:
    return run_gen_stage("sample", cfg, lambda: SampleProcessor(cfg), kind="prompts", log=log)
