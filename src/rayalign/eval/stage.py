"""`rayalign eval CONFIG.yaml`: base vs aligned on verifiable instructions, reward, judge, held-out pairs.

    rayalign eval rayjobs/configs/eval.yaml model=runs/quickstart/prefer/checkpoints/step-000020/model

For `model` and (if given) `baseline_model`:
1. instruction following: every suite prompt (the project's `suite/ifeval.jsonl`, or any JSONL of
   {id, prompt, constraints}) is answered through the Engine; `checks.check_response` scores each
   constraint. Prompt-level accuracy = all constraints of a prompt pass; instruction-level = the
   share of constraints passed; plus a pass rate per constraint kind, and for the kinds training
   targets ("seen kinds") and those it never targets ("unseen kinds", `checks.HELDOUT_KINDS`).
   `suite: heldout` is the independent held-out suite (`eval/heldout.py`), `builtin` the suite in
   the training templates' phrasings (trained-template performance).
2. reward (if `reward_model`): the mean reward-model score of the responses.
3. judge (if `judge_model` and a baseline): pairwise win rate of `model` against `baseline_model`,
   each pair judged in both orders; a win counts 1, a loss 0, a split or unparseable verdict ½.
4. held-out preference accuracy (if `heldout_pairs`, a prepared `pairs` dataset): how often the
   policy's log-prob margin prefers the chosen response (`objectives.accuracy.preference_accuracy`).

5. format leaks and repetition (`eval/leaks.py`): how often an answer adds quotes, a JSON
   wrapper, a P.S. or a title the prompt did not ask for, and repeats one 4-word phrase 4+ times.
6. lm-evaluation-harness (`lm_eval`, `eval/lmeval.py`): lm-eval tasks run against each model served
   through rayalign's OpenAI-compatible endpoint, and the suite's answers re-scored with lm-eval's
   IFEval checker code (how often the two implementations agree, and where they differ).
7. statistics (`eval/stats.py`): every pass rate with a 95% bootstrap interval, aligned − baseline
   as a paired bootstrap interval with its p-value ("within noise" when it covers 0), per kind
   with n, and paired per kind and for the seen and unseen kinds (a kind whose interval lies below
   0 is "down beyond noise"): `results["stats"]`; with `gate`, whether the paired lower bound clears it
   (`results["gate"]`, metric `gate/passed`; a pipeline then withholds `final_model`).

Writes `<output>/results.json`, `<output>/responses.jsonl` and the report folder (`report.md` +
PNG plots, with training curves and per-round results from `run_dir`'s stages when given);
`output` and `run_dir` may be object-storage URIs. Returns a `StageResult` whose metrics are the
headline numbers (`aligned/prompt_accuracy`, `judge/win_rate`, ...).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rayalign import storage
from rayalign.checks import check_response, kind_groups
from rayalign.config import Cfg, ConfigError
from rayalign.eval.leaks import leak_rates
from rayalign.eval.lmeval import LmEvalConfig
from rayalign.eval.stats import GateConfig, eval_stats, gate, kinds_down, record_read
from rayalign.generate.engine import EngineConfig, SamplingParams
from rayalign.results import StageResult


class EvalConfig(Cfg):
    model: str  # the aligned model (checkpoint folder, builtin:NAME or hub id)
    # an adapter folder (LoRA in peft format, or Aligner) the aligned model applies on `model`: a
    # preference or SFT stage run with `peft` and no merge saves one as its checkpoint, so set
    # `model` to that stage's base and `adapter: ${prefer.checkpoint}`; the baseline runs without it
    adapter: str | None = None
    baseline_model: str | None = None  # the model it is compared with (None: no comparison)
    output: str  # the eval folder: results.json, report.md, report.html
    # a packaged suite by name — "heldout" (independent: own phrasings, unseen kinds), "builtin" (the
    # training templates' phrasings: trained-template performance) — or a JSONL path of
    # {id, prompt, constraints}
    suite: str = "builtin"
    limit: int | None = None  # first N suite prompts (quick runs)
    # how to run each model: backend, dtype, batch size, tensor parallelism (its `model` is replaced
    # by `model` / `baseline_model`); `judge_engine` the same for the judge (default: `engine`)
    engine: EngineConfig = EngineConfig()
    params: SamplingParams = SamplingParams(max_tokens=192)  # sampling of the answers (greedy by default)
    reward_model: str | None = None  # a reward-model folder: mean reward of each model's answers
    judge_model: str | None = None  # an LLM judge comparing aligned and baseline answers (win rate)
    judge_engine: EngineConfig | None = None  # the judge's engine (default: engine)
    judge_limit: int | None = 40  # prompts the judge compares (None: all)
    heldout_pairs: str | None = None  # a prepared pairs dataset folder (rayalign prepare kind=pairs)
    heldout_limit: int | None = 200  # held-out pairs scored (None: all)
    run_dir: str | None = None  # a pipeline run folder: its training curves go into the report
    # promotion gate: the stage records whether `model` − `baseline_model` clears it (e.g.
    # {metric: prompt_level, min_lower_bound: 0.0}: the 95% lower bound of the paired difference is
    # above 0); a pipeline promotes `final_model` only when every gate in it passed
    gate: GateConfig | None = None
    # lm-evaluation-harness: its tasks run against each model served through rayalign's endpoint,
    # and the suite's answers re-scored with its IFEval checkers (agreement per kind, disagreements)
    lm_eval: LmEvalConfig | None = None
    # > 0: every model runs in a Ray task on GPUs (a GPU cluster's CPU head cannot host the
    # engine), booking what its engine needs: tensor_parallel_size GPUs in one placement group for
    # a vLLM engine sharded over several, else min(num_gpus, 1); 0: in this process
    num_gpus: float = 0.0
    # torch threads of the models run in this process (answering, held-out pairs, reward model):
    # more threads than free cores is much slower, not faster (a forward pass of the 135M model took
    # 5-15x longer with 2 threads than with 1 on a 2-core box busy with other work)
    torch_threads: int = Field(default=1, ge=1)
    # experiment trackers that get the headline metrics and the report folder (tables, plots) as
    # artifacts; the same libraries and environment settings as training's `report_to`
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)

    resource_fields = frozenset({"num_gpus", "report_to", "torch_threads"})

    @model_validator(mode="after")
    def _one_adapter_field(self) -> EvalConfig:
        for name, engine in (("engine", self.engine), ("judge_engine", self.judge_engine)):
            if engine is not None and (engine.adapter or engine.adapters):
                raise ValueError(
                    f"{name}.adapter/{name}.adapters would apply to every model the eval runs, the "
                    "baseline too; set the eval's own `adapter` (the aligned model's adapter folder)"
                )
        return self


PACKAGED_SUITES = {"builtin": "suite/ifeval.jsonl", "heldout": "suite/heldout.jsonl"}


def suite_path(spec: str) -> str:
    """Where a suite spec points: the packaged file of a named suite, else the spec itself."""
    if spec in PACKAGED_SUITES:
        return str(resources.files("rayalign.eval").joinpath(PACKAGED_SUITES[spec]))
    return spec


def load_suite(spec: str, limit: int | None = None) -> list[dict]:
    if spec in PACKAGED_SUITES:
        text = resources.files("rayalign.eval").joinpath(PACKAGED_SUITES[spec]).read_text()
        source = f"{spec} suite"
    else:
        if not storage.exists(spec):
            raise ConfigError(
                f"suite: {spec} does not exist; use {' or '.join(map(repr, PACKAGED_SUITES))} or a JSONL of "
                "{id, prompt, constraints}"
            )
        text, source = storage.read_text(spec), spec
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("constraints"), list):
            raise ConfigError(f"{source} line {n}: each row needs 'prompt' (string) and 'constraints' (list)")
        row.setdefault("id", f"suite-{n}")
        check_response(row["constraints"], "")  # unknown kinds / bad params fail here, before any generation
        rows.append(row)
    return rows[:limit] if limit else rows


def on_device(cfg: EvalConfig, fn, *args, engine: EngineConfig | None = None):
    """Run `fn(*args)` here with `torch_threads` threads, or (`num_gpus` > 0) in a Ray task booking what its `engine` needs: a
    placement group of `tensor_parallel_size` GPUs with the task in its first bundle for a
    tensor-parallel vLLM engine (`rayalign.placement`: booked once, not by the task and again by
    vLLM), else min(num_gpus, 1) GPU (one engine or model uses one device)."""
    if cfg.num_gpus <= 0:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.torch_threads)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(threads)
    from rayalign.placement import engine_gpus, run_on_gpus
    from rayalign.raycluster import ensure_ray

    ensure_ray()
    return run_on_gpus(fn, args, num_gpus=min(cfg.num_gpus, 1.0), tp=engine_gpus([engine]))


def generate(
    cfg: EvalConfig, model: str, prompts: list[str], on_done=None, adapter: str | None = None
) -> tuple[list[str], int]:
    """Greedy (by default) answers through the Engine, and how many were cut at max_tokens; a failed
    row answers "" (and fails its checks). `on_done(n)` is told how many have returned, as they return.
    `adapter`: an adapter folder (or URI, copied to this node) applied on `model`."""
    from rayalign.eval.answering import generate_reporting
    from rayalign.generate.engine import GenRequest, make_engine

    local = storage.local_copy_or_none(adapter)
    ecfg = cfg.engine.model_copy(update={"model": model, "adapter": local})
    engine = make_engine(ecfg)
    requests = [GenRequest(messages=[{"role": "user", "content": p}], params=cfg.params) for p in prompts]
    results = generate_reporting(engine, requests, ecfg.capacity(), on_done)
    engine.close()
    cut = sum(1 for r in results if r.ok and r.finish_reasons and r.finish_reasons[0] == "length")
    return [r.texts[0] if r.ok and r.texts else "" for r in results], cut


def instruction_scores(suite: list[dict], responses: list[str]) -> tuple[dict, list[list[bool]]]:
    passes = [check_response(r["constraints"], text) for r, text in zip(suite, responses)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for r, ok in zip(suite, passes):
        for c, v in zip(r["constraints"], ok):
            by_kind[c["kind"]].append(v)
    flat = [v for ok in passes for v in ok]
    groups = kind_groups(by_kind)
    seen = [v for k in groups["seen"] for v in by_kind[k]]
    unseen = [v for k in groups["unseen"] for v in by_kind[k]]
    scores = {
        "prompt_accuracy": sum(all(ok) for ok in passes) / max(len(passes), 1),
        "instruction_accuracy": sum(flat) / max(len(flat), 1),
        "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "kind_counts": {k: len(v) for k, v in sorted(by_kind.items())},
        # constraint-level pass rates of the kinds training targets ("seen") and of the kinds no
        # training path targets (`rayalign.checks.HELDOUT_KINDS`: "unseen"); None when absent
        "seen_kinds": groups["seen"],
        "unseen_kinds": groups["unseen"],
        "seen_instruction_accuracy": sum(seen) / len(seen) if seen else None,
        "unseen_instruction_accuracy": sum(unseen) / len(unseen) if unseen else None,
    }
    return scores, passes


def reward_scores(reward_model: str, prompts: list[str], responses: list[str], batch_size: int = 8) -> list[float]:
    import torch

    from rayalign.data.tokenize import tokenize_pair
    from rayalign.models.loader import load_tokenizer, resolve_model_path
    from rayalign.objectives.pairs import collate_sequences, sequence_rewards

    load_reward_model = _accuracy().load_reward_model

    tok = load_tokenizer(reward_model)
    model = load_reward_model(resolve_model_path(reward_model))
    seqs = []
    for p, y in zip(prompts, responses):
        t = tokenize_pair(tok, [{"role": "user", "content": p}], y, y)  # response on both sides: its ids once
        seqs.append((t["prompt_ids"], t["chosen_ids"]))
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i : i + batch_size]
            batch = collate_sequences([s[0] for s in chunk], [s[1] for s in chunk], tok.pad_token_id)
            out.extend(sequence_rewards(model, batch).tolist())
    return out


def judge_win_rate(cfg: EvalConfig, prompts: list[str], ours: list[str], base: list[str]) -> dict:
    """Each pair is judged twice (ours as A, then as B) so position bias cancels out."""
    from rayalign.generate.engine import GenRequest, make_engine
    from rayalign.generate.prompts import parse_judgement, user_turn

    n = min(len(prompts), cfg.judge_limit or len(prompts))
    reqs = []
    for p, a, b in zip(prompts[:n], ours[:n], base[:n]):
        reqs.append(user_turn("judge", prompt=p, response_a=a, response_b=b))
        reqs.append(user_turn("judge", prompt=p, response_a=b, response_b=a))
    engine = make_engine((cfg.judge_engine or cfg.engine).model_copy(update={"model": cfg.judge_model}))
    verdicts = engine.generate([GenRequest(messages=m, params=SamplingParams(max_tokens=16)) for m in reqs])
    engine.close()
    wins = losses = ties = 0
    for k in range(n):
        first = parse_judgement(verdicts[2 * k].texts[0] if verdicts[2 * k].ok else "")[0]
        second = parse_judgement(verdicts[2 * k + 1].texts[0] if verdicts[2 * k + 1].ok else "")[0]
        ours_first, ours_second = first == "A", second == "B"
        base_first, base_second = first == "B", second == "A"
        if ours_first and ours_second:
            wins += 1
        elif base_first and base_second:
            losses += 1
        else:
            ties += 1
    return {"pairs": n, "wins": wins, "losses": losses, "ties": ties, "win_rate": (wins + 0.5 * ties) / max(n, 1)}


def heldout_accuracy(model: str, dataset: str, limit: int | None, adapter: str | None = None) -> dict:
    from rayalign.models.loader import load_model, load_tokenizer

    acc = _accuracy()
    rows = acc.load_rows(dataset, limit)
    tok = load_tokenizer(model)
    local = storage.local_copy_or_none(adapter)
    return acc.preference_accuracy(load_model(model, dtype="fp32", adapter=local), rows, tok.pad_token_id)


def _accuracy():
    """The shared preference-accuracy module (imported when used: it pulls in torch)."""
    from rayalign.objectives import accuracy

    return accuracy


def _progress(cfg: EvalConfig, phase: str, done: int, total: int) -> None:
    """`<output>/_progress.json`, which the pipeline's display polls (requests answered so far)."""
    storage.write_json(storage.join(cfg.output, "_progress.json"), {"phase": phase, "done": done, "total": total})


def _answered(cfg: EvalConfig, phase: str, before: int, total: int, n: int) -> None:
    _progress(cfg, phase, before + n, total)


def score_model(
    cfg: EvalConfig, tag: str, spec: str, suite: list[dict], log=print, on_done=None, adapter: str | None = None
) -> tuple[dict, list[str], list]:
    """(scores, responses, per-prompt passes) of one model (`spec`, with `adapter` applied when
    given): suite, reward model, held-out pairs."""
    prompts = [r["prompt"] for r in suite]
    log(
        f"[eval] {tag}: answering {len(prompts)} suite prompts with {spec}"
        + (f" + adapter {adapter}" if adapter else "")
    )
    responses, cut = on_device(cfg, generate, cfg, spec, prompts, on_done, adapter, engine=cfg.engine)
    scores: dict = {"truncated": cut}
    scores["ifeval"], passes = instruction_scores(suite, responses)
    scores["leaks"] = leak_rates(suite, responses)
    if cfg.reward_model:
        rewards = on_device(cfg, reward_scores, cfg.reward_model, prompts, responses, cfg.engine.batch_size)
        scores["reward"] = {"mean": sum(rewards) / max(len(rewards), 1), "n": len(rewards)}
    if cfg.heldout_pairs:
        scores["heldout"] = on_device(cfg, heldout_accuracy, spec, cfg.heldout_pairs, cfg.heldout_limit, adapter)
    if cfg.lm_eval is not None:
        from rayalign.eval import lmeval

        if cfg.lm_eval.check_suite:
            scores["lm_eval_ifeval"] = lmeval.ifeval_agreement(suite, responses)
            agreement = scores["lm_eval_ifeval"]["agreement"]
            log(f"[eval] {tag}: rayalign checks agree with lm-eval's IFEval checkers on {agreement}")
        if cfg.lm_eval.tasks:
            scores["lm_eval"] = lmeval.run_tasks(cfg.lm_eval, spec, log, adapter)
    ife = scores["ifeval"]
    log(
        f"[eval] {tag}: prompt accuracy {ife['prompt_accuracy']:.3f}, instruction accuracy "
        f"{ife['instruction_accuracy']:.3f}"
    )
    return scores, responses, passes


def write_responses(path: str, suite: list[dict], responses: dict[str, list[str]], passes: dict[str, list]) -> None:
    lines = []
    for i, row in enumerate(suite):
        rec = {"id": row["id"], "prompt": row["prompt"], "constraints": row["constraints"]}
        for tag in responses:
            rec[tag] = {"response": responses[tag][i], "passed": passes[tag][i]}
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    storage.write_text(path, "".join(lines))


def run_eval(cfg: EvalConfig, log=print) -> StageResult:
    from rayalign.eval.report import write_report

    t0 = time.time()
    if cfg.lm_eval is not None:
        from rayalign.eval.lmeval import require_lm_eval

        require_lm_eval()  # before any generation: a missing library is a setup error, named with its fix
    storage.makedirs(cfg.output)
    suite = load_suite(cfg.suite, cfg.limit)
    models = {"aligned": cfg.model}
    if cfg.baseline_model:
        models["baseline"] = cfg.baseline_model
    # what each model is, as the reports name it (an adapter is part of the aligned model)
    shown = {
        tag: f"{spec} + adapter {cfg.adapter}" if tag == "aligned" and cfg.adapter else spec
        for tag, spec in models.items()
    }
    results: dict = {"models": shown, "suite": cfg.suite, "prompts": len(suite)}
    if cfg.adapter:
        results["adapter"] = cfg.adapter
    responses: dict[str, list[str]] = {}
    passes: dict[str, list[list[bool]]] = {}
    for k, (tag, spec) in enumerate(models.items()):
        phase, before, total = f"answering ({tag})", k * len(suite), len(models) * len(suite)
        _progress(cfg, phase, before, total)
        answered = partial(_answered, cfg, phase, before, total)
        adapter = cfg.adapter if tag == "aligned" else None
        results[tag], responses[tag], passes[tag] = score_model(cfg, tag, spec, suite, log, answered, adapter)
    _progress(cfg, "judging", len(models) * len(suite), len(models) * len(suite))
    if cfg.judge_model and cfg.baseline_model:
        log(f"[eval] judging aligned vs baseline with {cfg.judge_model}")
        results["judge"] = on_device(
            cfg,
            judge_win_rate,
            cfg,
            [r["prompt"] for r in suite],
            responses["aligned"],
            responses["baseline"],
            engine=cfg.judge_engine or cfg.engine,
        )
    write_responses(storage.join(cfg.output, "responses.jsonl"), suite, responses, passes)
    results["samples"] = [
        {"id": row["id"], "prompt": row["prompt"], **{tag: responses[tag][i] for tag in responses}}
        for i, row in enumerate(suite[:10])
    ]
    if cfg.run_dir:
        results["clair_pairs"] = clair_pairs(cfg.run_dir)
    info = {"name": cfg.suite, "path": suite_path(cfg.suite), "reads": record_read(cfg.suite, suite)}
    base = "baseline" if cfg.baseline_model else None
    results["stats"] = eval_stats(suite, passes, base, info)
    if cfg.gate is not None:
        results["gate"] = gate(cfg.gate, suite, passes, "aligned", base)
        log(f"[eval] gate {'passed' if results['gate']['passed'] else 'FAILED'}: {results['gate']['reason']}")
    metrics = flat_metrics(results)
    results["metrics"] = metrics
    results["seconds"] = round(time.time() - t0, 3)
    results_path = storage.join(cfg.output, "results.json")
    storage.write_json(results_path, results)
    report = write_report(storage.join(cfg.output, "report"), results, run_dir=cfg.run_dir)
    log(f"[eval] report: {report}")
    track_eval(cfg, metrics, storage.join(cfg.output, "report"))
    warnings = [
        f"{results[t]['truncated']}/{len(suite)} {t} answers truncated at max_tokens={cfg.params.max_tokens}: "
        "raise params.max_tokens"
        for t in models
        if results[t].get("truncated")
    ]
    for w in warnings:
        log(f"[eval] warning: {w}")
    return StageResult(
        stage="eval",
        output=cfg.output,
        metrics=metrics,
        details={
            "results": results_path,
            "report": str(report),
            "prompts": len(suite),
            "warnings": warnings,
            **({"gate": results["gate"]} if "gate" in results else {}),
        },
    )


def clair_pairs(run_dir: str, k: int = 10) -> list[dict]:
    """The first `k` pairs of the run's last CLAIR stage (original answer → revision), for the report."""
    from rayalign.data.shards import dataset_files, read_dataset

    summary = storage.read_json(storage.join(run_dir, "summary.json")) or {}
    outputs = [s.get("output") for s in summary.get("stages", []) if s.get("stage") == "clair" and s.get("output")]
    if not outputs or not dataset_files(outputs[-1]):
        return []
    rows = read_dataset(outputs[-1], columns=["id", "prompt", "chosen", "rejected", "status"]).slice(0, k).to_pylist()
    for r in rows:  # the prompt as the user wrote it: the last user turn of the conversation
        turns = r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": str(r["prompt"])}]
        r["prompt"] = next((t["content"] for t in reversed(turns) if t.get("role") == "user"), "")
    return rows


def track_eval(cfg: EvalConfig, metrics: dict[str, float], report_dir: str) -> None:
    """Send the headline metrics (step 0) and the report folder to each tracker in `report_to`.

    A report in object storage is fetched into a temporary folder first; MLflow's default local
    store then lives there too, so set MLFLOW_TRACKING_URI when the output is a bucket."""
    if not cfg.report_to:
        return
    import tempfile

    from rayalign.train.tracking import open_trackers

    with tempfile.TemporaryDirectory(prefix="rayalign-eval-") as tmp:
        folder = Path(tmp) / "report"
        if storage.is_uri(report_dir):
            storage.download_dir(report_dir, folder)
        else:
            folder = Path(report_dir)
        run_dir = Path(tmp) if storage.is_uri(cfg.output) else Path(cfg.output)
        name = f"eval-{storage.basename(cfg.output)}"
        for tracker in open_trackers(cfg.report_to, run_dir, name, cfg.model_dump(mode="json")):
            tracker.log(metrics, step=0)
            tracker.log_artifacts(folder)
            tracker.close()


def flat_metrics(results: dict) -> dict:
    """The handful of numbers a pipeline summary shows: `aligned/prompt_accuracy`, `judge/win_rate`, ..."""
    m = {}
    for tag in ("aligned", "baseline"):
        r = results.get(tag)
        if not r:
            continue
        m[f"{tag}/prompt_accuracy"] = r["ifeval"]["prompt_accuracy"]
        m[f"{tag}/instruction_accuracy"] = r["ifeval"]["instruction_accuracy"]
        for task, vals in r.get("lm_eval", {}).items():
            m.update({f"{tag}/lm_eval/{task}/{k}": v for k, v in vals.items() if "stderr" not in k})
        if r.get("lm_eval_ifeval", {}).get("agreement") is not None:
            m[f"{tag}/lm_eval_ifeval_agreement"] = r["lm_eval_ifeval"]["agreement"]
        if "leaks" in r:
            m[f"{tag}/format_leak_rate"] = r["leaks"]["any"]["rate"]
            m[f"{tag}/repetition_rate"] = r["leaks"]["repetition"]["rate"]
            if "length" in r["leaks"]:
                m[f"{tag}/median_words"] = r["leaks"]["length"]["median"]
        for group in ("seen", "unseen"):
            if r["ifeval"].get(f"{group}_instruction_accuracy") is not None:
                m[f"{tag}/{group}_kinds_accuracy"] = r["ifeval"][f"{group}_instruction_accuracy"]
        if "reward" in r:
            m[f"{tag}/reward"] = r["reward"]["mean"]
        if "heldout" in r:
            m[f"{tag}/heldout_accuracy"] = r["heldout"]["accuracy"]
    if "judge" in results:
        m["judge/win_rate"] = results["judge"]["win_rate"]
    for d in results.get("stats", {}).get("paired", {}).values():
        m.update({f"paired/{k}": float(d[k]) for k in ("diff", "lo", "hi", "p_value")})
    if results.get("stats", {}).get("paired_kinds"):
        down = kinds_down(results["stats"])
        m["paired/kinds_down"] = float(sum(len(v) for v in down.values()))
    if "gate" in results:
        m["gate/passed"] = 1.0 if results["gate"]["passed"] else 0.0
    return m
