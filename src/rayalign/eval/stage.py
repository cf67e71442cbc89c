"""`rayalign eval CONFIG.yaml`: base vs aligned on verifiable instructions, reward, judge, held-out pairs.

    rayalign eval rayjobs/configs/eval.yaml model=runs/quickstart/prefer/checkpoints/step-000020/model

For `model` and (if given) `baseline_model`:
1. instruction following: every suite prompt (the project's `suite/ifeval.jsonl`, or any JSONL of
   {id, prompt, constraints}) is answered through the Engine; `checks.check_response` scores each
   constraint. Prompt-level accuracy = all constraints of a prompt pass; instruction-level = the
   share of constraints passed; plus a pass rate per constraint kind.
2. reward (if `reward_model`): the mean reward-model score of the responses.
3. judge (if `judge_model` and a baseline): pairwise win rate of `model` against `baseline_model`,
   each pair judged in both orders; a win counts 1, a loss 0, a split or unparseable verdict ½.
4. held-out preference accuracy (if `heldout_pairs`, a prepared `pairs` dataset): how often the
   policy's log-prob margin prefers the chosen response (`objectives.accuracy.preference_accuracy`).

Writes `<output>/results.json`, `<output>/responses.jsonl` and the report folder (`report.md` +
PNG plots, with training curves and per-round results from `run_dir`'s stages when given);
`output` and `run_dir` may be object-storage URIs. Returns a `StageResult` whose metrics are the
headline numbers (`aligned/prompt_accuracy`, `judge/win_rate`, ...).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from rayalign import storage
from rayalign.checks import check_response
from rayalign.config import Cfg, ConfigError
from rayalign.generate.engine import EngineConfig, SamplingParams
from rayalign.results import StageResult


class EvalConfig(Cfg):
    model: str
    baseline_model: str | None = None
    output: str
    suite: str = "builtin"  # the packaged suite, or a JSONL path of {id, prompt, constraints}
    limit: int | None = None  # first N suite prompts (quick runs)
    # how to run each model: backend, dtype, batch size, tensor parallelism (its `model` is replaced
    # by `model` / `baseline_model`); `judge_engine` the same for the judge (default: `engine`)
    engine: EngineConfig = EngineConfig()
    params: SamplingParams = SamplingParams(max_tokens=192)
    reward_model: str | None = None
    judge_model: str | None = None
    judge_engine: EngineConfig | None = None
    judge_limit: int | None = 40
    heldout_pairs: str | None = None  # a prepared pairs dataset folder (rayalign prepare kind=pairs)
    heldout_limit: int | None = 200
    run_dir: str | None = None  # a pipeline run folder: its training curves go into the report
    # > 0: every model runs in a Ray task holding this many GPUs (a GPU cluster's CPU head cannot
    # host the engine); 0: in this process
    num_gpus: float = 0.0
    # experiment trackers that get the headline metrics and the report folder (tables, plots) as
    # artifacts; the same libraries and environment settings as training's `report_to`
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)

    resource_fields = frozenset({"num_gpus", "report_to"})


def load_suite(spec: str, limit: int | None = None) -> list[dict]:
    if spec == "builtin":
        text = resources.files("rayalign.eval").joinpath("suite/ifeval.jsonl").read_text()
        source = "builtin suite"
    else:
        if not storage.exists(spec):
            raise ConfigError(f"suite: {spec} does not exist; use 'builtin' or a JSONL of {{id, prompt, constraints}}")
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


def on_device(cfg: EvalConfig, fn, *args):
    """Run `fn(*args)` here, or in a Ray task with `num_gpus` GPUs when the config asks for them."""
    if cfg.num_gpus <= 0:
        return fn(*args)
    import ray

    from rayalign.raycluster import ensure_ray

    ensure_ray()
    return ray.get(ray.remote(num_gpus=cfg.num_gpus, num_cpus=1)(fn).remote(*args))


def generate(cfg: EvalConfig, model: str, prompts: list[str]) -> list[str]:
    """Greedy (by default) answers through the Engine; a failed row answers "" (and fails its checks)."""
    from rayalign.generate.engine import GenRequest, make_engine

    engine = make_engine(cfg.engine.model_copy(update={"model": model}))
    results = engine.generate(
        [GenRequest(messages=[{"role": "user", "content": p}], params=cfg.params) for p in prompts]
    )
    engine.close()
    return [r.texts[0] if r.ok and r.texts else "" for r in results]


def instruction_scores(suite: list[dict], responses: list[str]) -> tuple[dict, list[list[bool]]]:
    passes = [check_response(r["constraints"], text) for r, text in zip(suite, responses)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for r, ok in zip(suite, passes):
        for c, v in zip(r["constraints"], ok):
            by_kind[c["kind"]].append(v)
    flat = [v for ok in passes for v in ok]
    scores = {
        "prompt_accuracy": sum(all(ok) for ok in passes) / max(len(passes), 1),
        "instruction_accuracy": sum(flat) / max(len(flat), 1),
        "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "kind_counts": {k: len(v) for k, v in sorted(by_kind.items())},
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


def heldout_accuracy(model: str, dataset: str, limit: int | None) -> dict:
    from rayalign.models.loader import load_model, load_tokenizer

    acc = _accuracy()
    rows = acc.load_rows(dataset, limit)
    tok = load_tokenizer(model)
    return acc.preference_accuracy(load_model(model, dtype="fp32"), rows, tok.pad_token_id)


def _accuracy():
    """The shared preference-accuracy module (imported when used: it pulls in torch)."""
    from rayalign.objectives import accuracy

    return accuracy


def _progress(cfg: EvalConfig, phase: str, done: int, total: int) -> None:
    """`<output>/_progress.json`, which the pipeline's display polls (requests answered so far)."""
    storage.write_json(storage.join(cfg.output, "_progress.json"), {"phase": phase, "done": done, "total": total})


def score_model(cfg: EvalConfig, tag: str, spec: str, suite: list[dict], log=print) -> tuple[dict, list[str], list]:
    """(scores, responses, per-prompt passes) of one model: suite, reward model, held-out pairs."""
    prompts = [r["prompt"] for r in suite]
    log(f"[eval] {tag}: answering {len(prompts)} suite prompts with {spec}")
    responses = on_device(cfg, generate, cfg, spec, prompts)
    scores: dict = {}
    scores["ifeval"], passes = instruction_scores(suite, responses)
    if cfg.reward_model:
        rewards = on_device(cfg, reward_scores, cfg.reward_model, prompts, responses, cfg.engine.batch_size)
        scores["reward"] = {"mean": sum(rewards) / max(len(rewards), 1), "n": len(rewards)}
    if cfg.heldout_pairs:
        scores["heldout"] = on_device(cfg, heldout_accuracy, spec, cfg.heldout_pairs, cfg.heldout_limit)
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
    storage.makedirs(cfg.output)
    suite = load_suite(cfg.suite, cfg.limit)
    models = {"aligned": cfg.model}
    if cfg.baseline_model:
        models["baseline"] = cfg.baseline_model
    results: dict = {"models": models, "suite": cfg.suite, "prompts": len(suite)}
    responses: dict[str, list[str]] = {}
    passes: dict[str, list[list[bool]]] = {}
    for k, (tag, spec) in enumerate(models.items()):
        _progress(cfg, f"answering ({tag})", k * len(suite), len(models) * len(suite))
        results[tag], responses[tag], passes[tag] = score_model(cfg, tag, spec, suite, log)
    _progress(cfg, "judging", len(models) * len(suite), len(models) * len(suite))
    if cfg.judge_model and cfg.baseline_model:
        log(f"[eval] judging aligned vs baseline with {cfg.judge_model}")
        results["judge"] = on_device(
            cfg, judge_win_rate, cfg, [r["prompt"] for r in suite], responses["aligned"], responses["baseline"]
        )
    write_responses(storage.join(cfg.output, "responses.jsonl"), suite, responses, passes)
    metrics = flat_metrics(results)
    results["metrics"] = metrics
    results["seconds"] = round(time.time() - t0, 3)
    results_path = storage.join(cfg.output, "results.json")
    storage.write_json(results_path, results)
    report = write_report(storage.join(cfg.output, "report"), results, run_dir=cfg.run_dir)
    log(f"[eval] report: {report}")
    track_eval(cfg, metrics, storage.join(cfg.output, "report"))
    return StageResult(
        stage="eval",
        output=cfg.output,
        metrics=metrics,
        details={"results": results_path, "report": str(report), "prompts": len(suite)},
    )


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
        if "reward" in r:
            m[f"{tag}/reward"] = r["reward"]["mean"]
        if "heldout" in r:
            m[f"{tag}/heldout_accuracy"] = r["heldout"]["accuracy"]
    if "judge" in results:
        m["judge/win_rate"] = results["judge"]["win_rate"]
    return m
