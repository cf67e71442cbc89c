"""Checks from a maintained library: the lm-evaluation-harness (`lm_eval`, in the `dev` extra).

Two uses in the eval stage (`lm_eval:` in its config):

1. `tasks`: lm-eval tasks (`ifeval`, ... or the user's own task YAMLs under `include_path`) run
   by lm-eval itself against the model served through rayalign's OpenAI-compatible endpoint —
   lm-eval's `local-chat-completions` (or `local-completions`) model pointed at it. With no
   `base_url` the stage serves the model for the run (`rayalign serve` on a free loopback port)
   and stops it afterwards. Hub-hosted tasks need hub access, as lm-eval always does.
2. `check_suite`: the stage's own suite answers are re-scored with lm-eval's IFEval checker code
   (`lm_eval.tasks.ifeval`), an implementation written apart from `rayalign.checks`, for every
   constraint kind IFEval has a counterpart for (`IFEVAL_IDS`); the results list how often the two
   agree per kind and the disagreements (response, both verdicts), so a bug in either shows.
   A checker lm-eval cannot run here (its sentence counter needs NLTK's punkt data, which it
   downloads on first use) is reported as unavailable with the error, not counted.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from rayalign.config import Cfg


class LmEvalConfig(Cfg):
    tasks: list[str] = Field(default_factory=list)  # lm-eval task names run against the served model
    include_path: str | None = None  # a folder of extra task YAMLs (e.g. tasks over local data files)
    # lm-eval's API model: chat messages (chat template applied by the server) or raw completions
    model_type: Literal["local-chat-completions", "local-completions"] = "local-chat-completions"
    base_url: str | None = None  # an endpoint already serving the model (…/v1); None: serve it for the run
    limit: int | None = None  # documents per task (quick runs)
    num_concurrent: int = 1  # requests lm-eval keeps in flight against the endpoint
    max_gen_toks: int = 256  # most tokens generated per lm-eval request
    check_suite: bool = True  # score the suite's answers with lm-eval's IFEval checkers too
    # extra `rayalign serve` settings for the endpoint the stage starts (engine, backend, ...)
    serve: dict[str, Any] = Field(default_factory=dict)


def require_lm_eval() -> None:
    import importlib.util

    from rayalign.config import ConfigError

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            "lm_eval: the lm-evaluation-harness is not installed here; install it with "
            "pip install 'lm_eval[api,ifeval]>=0.4.13,<0.5' (it is in rayalign's dev extra), or drop lm_eval"
        )


def _words_lt(n: int) -> dict:
    return {"num_words": n + 1, "relation": "less than"}


# rayalign kind -> (IFEval instruction id, kwargs from the constraint's params); kinds without an
# IFEval counterpart (start_with, paragraphs — IFEval splits on ***, numbered_items,
# ends_with_question) are not compared
IFEVAL_IDS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "lowercase": ("change_case:english_lowercase", lambda c: {}),
    "uppercase": ("change_case:english_capital", lambda c: {}),
    "include_keywords": ("keywords:existence", lambda c: {"keywords": c["keywords"]}),
    "forbidden_words": ("keywords:forbidden_words", lambda c: {"forbidden_words": c["words"]}),
    "keyword_frequency": (
        "keywords:frequency",
        lambda c: {"keyword": c["keyword"], "frequency": c["min"], "relation": "at least"},
    ),
    "end_with": ("startend:end_checker", lambda c: {"end_phrase": c["phrase"]}),
    "bullet_count": ("detectable_format:number_bullet_lists", lambda c: {"num_bullets": c["count"]}),
    "json_format": ("detectable_format:json_format", lambda c: {}),
    "max_words": ("length_constraints:number_words", lambda c: _words_lt(c["max"])),
    "min_words": ("length_constraints:number_words", lambda c: {"num_words": c["min"], "relation": "at least"}),
    "max_sentences": (
        "length_constraints:number_sentences",
        lambda c: {"num_sentences": c["max"] + 1, "relation": "less than"},
    ),
    "no_commas": ("punctuation:no_comma", lambda c: {}),
    "sections": (
        "detectable_format:multiple_sections",
        lambda c: {"section_spliter": c.get("marker", "Section"), "num_sections": c["count"]},
    ),
    "quotation": ("startend:quotation", lambda c: {}),
    "title": ("detectable_format:title", lambda c: {}),
    "placeholders": ("detectable_content:number_placeholders", lambda c: {"num_placeholders": c["min"]}),
    "postscript": ("detectable_content:postscript", lambda c: {"postscript_marker": c.get("marker", "P.S.")}),
    "highlights": ("detectable_format:number_highlighted_sections", lambda c: {"num_highlights": c["min"]}),
    "two_responses": ("combination:two_responses", lambda c: {}),
}


def ifeval_verdict(constraint: dict, response: str) -> bool | None:
    """lm-eval's IFEval checker on one constraint (strict, as IFEval scores it); None: no counterpart."""
    from lm_eval.tasks.ifeval import instructions_registry

    entry = IFEVAL_IDS.get(constraint["kind"])
    if entry is None:
        return None
    iid, kwargs = entry
    checker = instructions_registry.INSTRUCTION_DICT[iid](iid)
    checker.build_description(**kwargs(constraint))
    return bool(response.strip() and checker.check_following(response))


def ifeval_agreement(suite: list[dict], responses: list[str], show: int = 20) -> dict:
    """Our checks against lm-eval's on the same answers: per kind {n, agree}, the overall agreement,
    up to `show` disagreements, and the kinds lm-eval could not check here (with the error)."""
    import langdetect

    from rayalign.checks import check_one

    langdetect.DetectorFactory.seed = 0  # IFEval's case checkers ask langdetect; seeded, it is repeatable
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "agree": 0})
    disagreements: list[dict] = []
    unavailable: dict[str, str] = {}
    for row, text in zip(suite, responses):
        for c in row["constraints"]:
            kind = c["kind"]
            if kind not in IFEVAL_IDS or kind in unavailable:
                continue
            try:
                theirs = ifeval_verdict(c, text)
            except (LookupError, OSError) as e:  # NLTK data lm-eval downloads on first use
                unavailable[kind] = f"{type(e).__name__}: {_first_line(str(e))}"
                continue
            ours = check_one(c, text)
            by_kind[kind]["n"] += 1
            by_kind[kind]["agree"] += int(ours == theirs)
            if ours != theirs and len(disagreements) < show:
                disagreements.append(
                    {"id": row.get("id"), "constraint": c, "rayalign": ours, "lm_eval": theirs, "response": text[:500]}
                )
    n = sum(v["n"] for v in by_kind.values())
    agree = sum(v["agree"] for v in by_kind.values())
    return {
        "compared": n,
        "agree": agree,
        "agreement": agree / n if n else None,
        "by_kind": dict(sorted(by_kind.items())),
        "disagreements": disagreements,
        "unavailable": unavailable,
    }


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if any(c.isalpha() for c in line)), "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_tasks(cfg: LmEvalConfig, model: str, log=print, adapter: str | None = None) -> dict:
    """lm-eval's own run of `cfg.tasks` against the model (with `adapter` applied when given) through
    rayalign's endpoint: {task: metrics}."""
    if not cfg.tasks:
        return {}
    if cfg.base_url:
        return _evaluate(cfg, cfg.base_url, cfg.serve.get("served_model_name") or model, log)
    from rayalign import storage
    from rayalign.serve.config import ServeConfig
    from rayalign.serve.server import start, stop

    local = storage.local_copy_or_none(adapter)
    scfg = ServeConfig(
        **{"model": model, "adapter": local, "port": free_port(), "app_name": "rayalign-lm-eval", **cfg.serve}
    )
    log(f"[eval] lm-eval: serving {model} for {', '.join(cfg.tasks)}")
    url = start(scfg)
    try:
        return _evaluate(cfg, url, scfg.served_model_name or model, log)
    finally:
        stop(scfg)


def _evaluate(cfg: LmEvalConfig, url: str, name: str, log) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    chat = cfg.model_type == "local-chat-completions"
    root = url.rstrip("/").removesuffix("/v1")  # the server root or its …/v1 URL, as `rayalign serve` prints
    endpoint = f"{root}/v1/{'chat/completions' if chat else 'completions'}"
    model_args: dict[str, Any] = {
        "model": name,
        "base_url": endpoint,
        "num_concurrent": cfg.num_concurrent,
        "max_retries": 1,
        "max_gen_toks": cfg.max_gen_toks,
        "tokenized_requests": False,
        "tokenizer_backend": None,
    }
    out = lm_eval.simple_evaluate(
        model=cfg.model_type,
        model_args=model_args,
        tasks=cfg.tasks,
        task_manager=TaskManager(include_path=cfg.include_path) if cfg.include_path else TaskManager(),
        limit=cfg.limit,
        apply_chat_template=chat,
        log_samples=False,
    )
    results = {task: _plain(metrics) for task, metrics in (out or {}).get("results", {}).items()}
    for task, metrics in results.items():
        log(f"[eval] lm-eval {task}: {metrics}")
    return results


def _plain(metrics: dict) -> dict:
    """lm-eval's per-task metrics as JSON numbers (its 'alias' and 'N/A' stderr entries dropped)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def lmeval_md(results: dict, tags: list[str]) -> list[str]:
    """report.md: lm-eval task metrics per model, and the IFEval cross-check of the suite's scoring."""
    md: list[str] = []
    tasks = sorted({t for tag in tags for t in results[tag].get("lm_eval", {})})
    if tasks:
        md += ["## lm-evaluation-harness tasks", "", "| task | metric | " + " | ".join(tags) + " |"]
        md.append("|---|---|" + "---:|" * len(tags))
        for task in tasks:
            names = sorted({k for tag in tags for k in results[tag].get("lm_eval", {}).get(task, {})})
            for k in names:
                cells = [results[tag].get("lm_eval", {}).get(task, {}).get(k) for tag in tags]
                md.append(f"| {task} | {k} | " + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |")
        md.append("")
    checks = {tag: results[tag]["lm_eval_ifeval"] for tag in tags if "lm_eval_ifeval" in results[tag]}
    if checks:
        md += ["## Suite scored by lm-eval's IFEval checkers too", ""]
        for tag, a in checks.items():
            share = "—" if a["agreement"] is None else f"{a['agreement']:.3f}"
            md.append(f"- {tag}: {a['agree']} of {a['compared']} comparable constraints agree ({share})")
            for kind, why in a["unavailable"].items():
                md.append(f"  - {kind}: not checked by lm-eval here ({why})")
            for d in a["disagreements"][:5]:
                md.append(
                    f"  - {d['id']} {d['constraint']['kind']}: rayalign {d['rayalign']}, lm-eval {d['lm_eval']} — "
                    f"{d['response'][:120]!r}"
                )
        md.append("")
    return md
