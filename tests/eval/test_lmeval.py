"""lm-evaluation-harness against rayalign: lm-eval's IFEval checker code agrees with rayalign's checks
(disagreements reported), and lm-eval runs a task over a local data file through the served model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from rayalign.eval import heldout, make_suite
from rayalign.eval.lmeval import IFEVAL_IDS, LmEvalConfig, ifeval_agreement, ifeval_verdict, run_tasks
from rayalign.generate import verify

TINY = "tiny-random:llama"


def test_two_implementations_agree_on_the_suites_and_report_where_they_differ():
    """Each suite prompt answered by the rule fix of a plain answer (a passing answer for most, the
    unfixed one for min_words / held-out kinds): lm-eval's checkers and rayalign's agree on every
    comparable constraint but one known difference — IFEval's uppercase check also asks langdetect for
    English, and langdetect does not take an all-capitals text for English."""
    rows = make_suite.build() + heldout.build()
    plain = "Bees visit many flowers in the garden. They carry nectar back to the hive for honey."
    answers = [verify.rule_fix({"constraints": r["constraints"]}, plain) or plain for r in rows]
    a = ifeval_agreement(rows, answers, show=50)
    compared = {k for r in rows for c in r["constraints"] if (k := c["kind"]) in IFEVAL_IDS}
    assert set(a["by_kind"]) | set(a["unavailable"]) == compared
    assert set(a["unavailable"]) <= {"max_sentences"}  # punkt data: lm-eval downloads it on first use
    for kind, v in a["by_kind"].items():
        assert v["n"] > 0 and (v["agree"] == v["n"] or kind == "uppercase"), (kind, v)
    assert {d["constraint"]["kind"] for d in a["disagreements"]} == {"uppercase"}
    assert all(d["rayalign"] and not d["lm_eval"] and d["response"].isupper() for d in a["disagreements"])
    assert a["agree"] == a["compared"] - len(a["disagreements"]) and a["compared"] > 250


def test_checkers_by_hand():
    """Both sides of a few IFEval checkers, to show the mapping of parameters is right."""
    assert ifeval_verdict({"kind": "max_words", "max": 3}, "one two three") is True  # ours: at most 3
    assert ifeval_verdict({"kind": "max_words", "max": 3}, "one two three four") is False
    assert ifeval_verdict({"kind": "keyword_frequency", "keyword": "tea", "min": 2}, "Tea and tea.") is True
    assert ifeval_verdict({"kind": "highlights", "min": 2}, "An *a* and *b*.") is True
    assert ifeval_verdict({"kind": "start_with", "phrase": "Hi"}, "Hi there") is None  # no IFEval counterpart
    assert ifeval_verdict({"kind": "no_commas"}, "   ") is False  # IFEval fails an empty answer outright


@pytest.mark.timeout(300)
def test_lm_eval_task_over_a_local_file_through_the_served_model(ray_cluster, tmp_path):
    """lm-eval runs a generate-until task defined over a local JSONL against rayalign's endpoint. The
    targets of half the documents are the model's own greedy answers (asked of the same endpoint
    first), the other half wrong, so lm-eval's exact match must be exactly 0.5 — it can only be if
    lm-eval really got the served model's answers."""
    import openai

    from rayalign.eval.lmeval import free_port
    from rayalign.serve.config import ServeConfig
    from rayalign.serve.server import start, stop

    questions = ["Name a colour.", "Say a number.", "Greet me.", "Name an animal."]
    scfg = ServeConfig(model=TINY, port=free_port(), app_name="rayalign-lm-eval-test", engine_num_cpus=0.5)
    url = start(scfg)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        own = [
            client.chat.completions.create(
                model=TINY, max_tokens=6, temperature=0, seed=1234, messages=[{"role": "user", "content": q}]
            )
            .choices[0]
            .message.content
            for q in questions
        ]
        docs = tmp_path / "docs.jsonl"
        targets = [own[0], own[1], "definitely not this", "nor this"]
        docs.write_text("".join(json.dumps({"question": q, "answer": t}) + "\n" for q, t in zip(questions, targets)))
        (tmp_path / "task.yaml").write_text(
            "task: rayalign_local_echo\n"
            "dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {docs}\n"
            "test_split: test\n"
            "output_type: generate_until\n"
            "doc_to_text: '{{question}}'\n"
            "doc_to_target: '{{answer}}'\n"
            "generation_kwargs:\n  until: []\n  max_gen_toks: 6\n  do_sample: false\n  temperature: 0.0\n"
            "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        )
        cfg = LmEvalConfig(
            tasks=["rayalign_local_echo"], include_path=str(tmp_path), base_url=url + "/v1", max_gen_toks=6
        )
        results = run_tasks(cfg, TINY, log=lambda *_: None)
    finally:
        stop(scfg)
    assert results["rayalign_local_echo"]["exact_match,none"] == 0.5


def test_missing_library_is_a_named_setup_error(tmp_path, monkeypatch):
    import importlib.util

    from rayalign.config import ConfigError
    from rayalign.eval.stage import EvalConfig, run_eval

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    cfg = EvalConfig(model=TINY, output=str(tmp_path / "e"), lm_eval={"tasks": ["ifeval"]})
    with pytest.raises(ConfigError, match=r"lm_eval: the lm-evaluation-harness is not installed.*pip install"):
        run_eval(cfg, log=lambda *_: None)
    assert not (tmp_path / "e").exists()  # nothing generated or written
