"""What every generation stage shares: its config fields, engine reuse per actor, and the run call.

A generation stage is a `run_sharded` stage whose Processor holds an Engine: Ray Data feeds shards
to an actor pool sized by `pool` (fractional CPUs so a 2-CPU box never deadlocks), each actor
builds its engine once, and every shard lands as a parquet file; a re-run skips finished shards.

Each actor keeps `pool.shards_in_flight` shards going at once, in threads over its one processor
and engine. The default, "auto", sizes that from the engine's capacity (`EngineConfig.capacity`:
vLLM's `max_num_seqs`, HF's `batch_size`) and `shard_rows` so the shards in flight hold 4× the rows the
engine runs at once (2× on HF; `rayalign.data.shards.auto_in_flight`), and the vLLM engine admits
a shard's rows while its backlog is under twice its capacity. On vLLM's async engine the rows
of every shard in flight share one running batch, so the batch refills from the next shard while
the longest answers of the last one finish, and one shard's read, tokenisation and parquet write
(all on the shard's own thread, never on the engine loop) overlap the others' decoding.

The HF engine serialises its `generate` calls under a lock, so there only the CPU work overlaps.
Its rows are not batched across shards on purpose: transformers' `generate` is a static batch that
runs until its longest row ends, so joining two shards' rows into one call makes the short rows
of both wait for the longer tail (what several shards in flight avoid on vLLM), and a shard of
`batch_size` rows or more already fills a call by itself. Give HF stages `shard_rows` ≥
`engine.batch_size`. (The HF engine's continuously batched loop, which serves concurrent streams,
is not used here: it samples every row from one shared generator, so a shard's sampled rows could
not be reproduced by its seed, which exact resume relies on.)

Why not `ray.data.llm` (`build_processor` + `vLLMEngineProcessorConfig`): its vLLM stage is a Ray
Data operator over rows, so a row's output reaches storage only through a downstream write of
Ray Data's choosing — no per-shard commit (data, then marker, then manifest) to resume from
exactly once, no per-row quarantine with a reason (its row errors are a column or a failed job),
and it owns tokenisation (the two backends here share one HF tokenizer so their greedy outputs
agree). Its default vLLM stage also asks Ray for a GPU, which never arrives on a CPU box. What it
adds over this — batches from several blocks in flight on one async engine — is what the threaded
shard runner does here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from rayalign.config import Cfg
from rayalign.data.shards import PoolConfig, commit_manifest, quarantine_row, run_sharded
from rayalign.generate.engine import Engine, EngineConfig, GenRequest, GenResult, SamplingParams, make_engine
from rayalign.placement import TPActorOptions, check_host_gpus, engine_gpus, tp_actor_options
from rayalign.results import Manifest, StageResult, numeric_metrics


class GenStageConfig(Cfg):
    inputs: list[str]  # prompt rows (files, folders or globs; local or object storage)
    output: str  # the dataset folder (parquet shards + manifest.json)
    model: str | None = None  # shorthand for engine.model (pipeline `defaults.model` lands here)
    engine: EngineConfig = EngineConfig()  # the generation engine: backend, model, dtype, batch size
    params: SamplingParams = SamplingParams()  # sampling parameters
    pool: PoolConfig = PoolConfig()  # actor pool: each actor holds one engine

    def policy_engine(self) -> EngineConfig:
        return self.engine.model_copy(update={"model": self.model}) if self.model else self.engine

    def engine_configs(self) -> list[EngineConfig]:
        """Every engine an actor of this stage may build (the policy's, and e.g. clair's reviser)."""
        return [self.policy_engine()] + [v for v in self.__dict__.values() if isinstance(v, EngineConfig)]

    def actor_options(self) -> TPActorOptions | None:
        """Ray options of each actor when it hosts a tensor-parallel engine: a placement group of
        the engine's GPUs (`rayalign.placement`); None: the pool's resources as they are."""
        tp = engine_gpus(self.engine_configs())
        check_host_gpus(self.pool.num_gpus, tp, "pool.num_gpus")
        return tp_actor_options(tp, self.pool.num_cpus, self.pool.resources) if tp > 1 else None


# Shards each generation actor works on at once (a resource setting: `pool.shards_in_flight`):
# "auto" sizes it from the engine's capacity and the shard size.
GEN_SHARDS_IN_FLIGHT: Literal["auto"] = "auto"

_ENGINES: dict[str, Engine] = {}


def engine_for(cfg: EngineConfig) -> Engine:
    """One engine per config per process: a stage needing the same model twice loads it once."""
    key = cfg.hash()
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(cfg)
    return _ENGINES[key]


class EngineProcessor:
    """Base of the stage processors: the config and the policy engine, built once per actor.

    `process` is called from several threads at once (`pool.shards_in_flight` shards per actor),
    so subclasses keep no per-call state on `self`. On `backend: vllm` the engine is vLLM's async
    engine on its own loop: `generate` submits a shard's rows at once and the running batch refills
    as rows finish, and concurrent `process` calls share that one batch, keeping the engine full
    across shard boundaries."""

    def __init__(self, cfg: GenStageConfig):
        self.cfg = cfg
        self.ecfg = cfg.policy_engine()
        self.engine = engine_for(self.ecfg)


def release_engines(keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Drop (and close) engines built since `keep` was taken. In-process runs (pool.workers 0) would
    otherwise hold one stage's model — on a GPU, vLLM's reserved memory — while the next stage loads."""
    for key in set(_ENGINES) - set(keep):
        _ENGINES.pop(key).close()


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)


def chat_requests(prompts: list[list[dict]], params: SamplingParams, ids: list[str] | None = None) -> list[GenRequest]:
    return [GenRequest(messages=m, params=params, request_id=(ids[i] if ids else "")) for i, m in enumerate(prompts)]


def first_text(res: GenResult) -> tuple[str, str]:
    """(text, finish_reason) of a result's first completion; ("", "error") for an error row."""
    if not res.ok or not res.texts:
        return "", "error"
    return res.texts[0], (res.finish_reasons[0] if res.finish_reasons else "stop")


def quarantine(stage: str, index: int, code: str, detail: str, raw: dict) -> dict:
    return quarantine_row(stage, index, code, detail, dumps(raw))


def run_gen_stage(
    stage: str,
    cfg: GenStageConfig,
    factory: Callable[[], Any],
    kind: str | None,
    extra: dict | None = None,
    log=print,
    summarise: Callable[[Manifest], dict[str, Any]] | None = None,
) -> StageResult:
    """Run a generation stage through the sharded runner and return its StageResult.

    `summarise(manifest) -> {key: value}` adds stage-specific summaries (e.g. clair's contrast)
    to the manifest and the result's details; numbers among them become metrics too."""
    before = set(_ENGINES)
    placement = cfg.actor_options() if cfg.pool.workers > 0 else None
    try:
        manifest = run_sharded(
            stage,
            cfg.inputs,
            cfg.output,
            factory,
            kind=kind,
            pool=cfg.pool,
            config_hash=cfg.hash(),
            extra={"model": cfg.policy_engine().model, **(extra or {})},
            log=log,
            shards_in_flight=GEN_SHARDS_IN_FLIGHT,
            capacity=cfg.policy_engine().capacity(cfg.params.n),
            depth=cfg.policy_engine().queue_depth(),
            actor_options=placement,
        )
    finally:
        release_engines(keep=before)
        if placement is not None:
            placement.release()  # the engines' GPUs are free for the next stage
    manifest.log_counts(log)
    added: dict[str, Any] = {}
    statuses = {k[len("status.") :]: int(v) for k, v in manifest.stats.items() if k.startswith("status.")}
    if statuses:
        added["status_counts"] = dict(sorted(statuses.items()))
        log(f"    statuses: {added['status_counts']}")
    added.update(summarise(manifest) if summarise else {})
    if added:  # one atomic replace: a reader never sees a half-written manifest
        commit_manifest(cfg.output, manifest.with_fields(**added))
    metrics: dict[str, int | float] = {}  # besides the manifest's stats (status.X, token counts: summed)
    for key, value in added.items():
        if isinstance(value, dict) and key != "status_counts":  # the status.X metrics already
            metrics.update({f"{key}.{k}": v for k, v in numeric_metrics(value).items()})
    warnings = truncation_warnings(statuses, cfg.params)
    for w in warnings:
        log(f"[{stage}] warning: {w}")
    details = {"complete": manifest.complete, **added, **({"warnings": warnings} if warnings else {})}
    return manifest.to_result(cfg.output, metrics, **details)


def truncation_warnings(statuses: dict[str, int], params: SamplingParams) -> list[str]:
    """A sentence to act on when answers were cut at `max_tokens` (status `truncated`)."""
    cut, total = statuses.get("truncated", 0), sum(statuses.values())
    if not cut:
        return []
    return [f"{cut}/{total} samples truncated at max_tokens={params.max_tokens}: raise params.max_tokens"]


def count_status(stats: dict, status: str) -> None:
    stats[f"status.{status}"] = stats.get(f"status.{status}", 0) + 1
