"""The eval stage: scoring by hand-worked numbers, then a real run on the tiny model (HF engine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rayalign.checks import check_response
from rayalign.eval.report import training_logs, write_report
from rayalign.eval.stage import EvalConfig, instruction_scores, load_suite, run_eval

REPO = Path(__file__).resolve().parents[2]
LM_EVAL = importlib.util.find_spec("lm_eval") is not None

SUITE = [
    {"id": "a", "prompt": "p1", "constraints": [{"kind": "no_commas"}, {"kind": "max_words", "max": 3}]},
    {"id": "b", "prompt": "p2", "constraints": [{"kind": "lowercase"}]},
    {"id": "c", "prompt": "p3", "constraints": [{"kind": "no_commas"}]},
]


def test_instruction_scores_by_hand():
    """Responses: 'one two' passes both of a; 'Hi' fails b's lowercase; 'x, y' fails c's no_commas.
    Prompt level: 1 of 3 prompts fully passes → 1/3. Instruction level: 2 of 4 constraints → 0.5.
    By kind: no_commas 1/2, max_words 1/1, lowercase 0/1."""
    scores, passes = instruction_scores(SUITE, ["one two", "Hi", "x, y"])
    assert passes == [[True, True], [False], [False]]
    assert scores["prompt_accuracy"] == pytest.approx(1 / 3)
    assert scores["instruction_accuracy"] == 0.5
    assert scores["by_kind"] == {"lowercase": 0.0, "max_words": 1.0, "no_commas": 0.5}
    assert scores["kind_counts"] == {"lowercase": 1, "max_words": 1, "no_commas": 2}


def test_seen_and_unseen_kinds_scored_apart():
    """no_commas is trained (seen), ends_with_question and highlights are held-out kinds (unseen):
    'a b?' passes no_commas and ends_with_question, fails highlights → seen 1/1, unseen 1/2."""
    suite = [{"id": "d", "prompt": "p", "constraints": [{"kind": "no_commas"}, {"kind": "ends_with_question"}]}]
    suite.append({"id": "e", "prompt": "q", "constraints": [{"kind": "highlights", "min": 1}]})
    scores, _ = instruction_scores(suite, ["a b?", "a b?"])
    assert scores["seen_kinds"] == ["no_commas"] and scores["unseen_kinds"] == ["ends_with_question", "highlights"]
    assert scores["seen_instruction_accuracy"] == 1.0 and scores["unseen_instruction_accuracy"] == 0.5
    assert instruction_scores(SUITE, ["", "", ""])[0]["unseen_instruction_accuracy"] is None


def test_suite_loading_errors(tmp_path):
    assert len(load_suite("builtin")) >= 100 and len(load_suite("builtin", limit=5)) == 5
    assert [r["id"] for r in load_suite("heldout", limit=2)] == ["heldout-0000", "heldout-0001"]
    with pytest.raises(ValueError, match="'builtin' or 'heldout'"):
        load_suite(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"prompt": "x", "constraints": [{"kind": "shout"}]}\n')
    with pytest.raises(ValueError, match="unknown constraint kind 'shout'"):
        load_suite(str(bad))


def test_report_with_training_curves(tmp_path):
    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-4}) + "\n" for s in range(1, 11))
    )
    (run / "prefer").mkdir()
    (run / "prefer" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.69, "margins": 0.05 * s}) + "\n" for s in range(1, 6))
        + '{"step": 6, "lo'
    )  # torn last line
    logs = training_logs(run)
    assert sorted(logs) == ["prefer", "sft"] and len(logs["prefer"]) == 5
    scores, _ = instruction_scores(SUITE, ["one two", "Hi", "x, y"])
    base, _ = instruction_scores(SUITE, ["a, b", "hi", "x y"])
    results = {
        "models": {"aligned": "m1", "baseline": "m0"},
        "suite": "t",
        "prompts": 3,
        "aligned": {"ifeval": scores},
        "baseline": {"ifeval": base},
    }
    report = write_report(tmp_path / "report", results, run_dir=run)
    text = Path(report).read_text()
    assert "| no_commas | 2 | 0.500 | 0.500 | +0.000 |" in text
    assert "| lowercase | 1 | 1.000 | 0.000 | -1.000 |" in text
    assert "10 logged steps; loss 2.900 → 2.000" in text
    for png in ("ifeval_by_kind.png", "train_sft.png", "train_prefer.png", "margins_prefer.png"):
        assert (tmp_path / "report" / "plots" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(300)
def test_eval_tiny_model_end_to_end(tmp_path):
    """Aligned and baseline are the same tiny model, decoded greedily: identical answers, equal scores,
    and a judge that can only split (or fail to parse) → win rate exactly 0.5."""
    from rayalign.data.prepare import PrepareConfig, run_prepare

    pairs = tmp_path / "pairs"
    run_prepare(
        PrepareConfig(
            kind="pairs",
            inputs=[str(REPO / "rayjobs/data/pairs.jsonl")],
            output=str(pairs),
            model="tiny-random:llama",
            max_length=256,
            pool={"workers": 0},
        ),
        log=lambda *_: None,
    )
    cfg = EvalConfig(
        model="tiny-random:llama",
        baseline_model="tiny-random:llama",
        output=str(tmp_path / "eval"),
        limit=8,
        params={"max_tokens": 12},
        judge_model="tiny-random:llama",
        judge_limit=4,
        heldout_pairs=str(pairs),
        heldout_limit=16,
        lm_eval={"check_suite": True} if LM_EVAL else None,
    )
    out = run_eval(cfg, log=lambda *_: None)
    m = out.metrics
    assert out.counts is None and out.output == str(tmp_path / "eval")  # eval reads prompts; it writes no dataset
    assert m["aligned/prompt_accuracy"] == m["baseline/prompt_accuracy"]
    assert m["aligned/heldout_accuracy"] == m["baseline/heldout_accuracy"]
    assert 0.0 <= m["aligned/heldout_accuracy"] <= 1.0
    assert m["judge/win_rate"] == 0.5
    results = json.loads(Path(out.details["results"]).read_text())
    assert results["judge"]["wins"] == results["judge"]["losses"]
    # identical answers: identical leak rates, a paired difference of exactly 0, within noise
    assert (
        results["aligned"]["leaks"] == results["baseline"]["leaks"]
        and results["aligned"]["leaks"]["repetition"]["n"] == 8
    )
    assert results["stats"]["paired"]["aligned - baseline"]["diff"] == 0.0 and m["paired/p_value"] == 1.0
    kinds = results["stats"]["paired_kinds"]["aligned - baseline"]
    assert kinds and all(d["diff"] == 0.0 and d["within_noise"] for d in kinds.values())
    assert m["paired/kinds_down"] == 0.0
    assert [s["id"] for s in results["samples"]] == [f"ifeval-{i:04d}" for i in range(8)]
    if LM_EVAL:  # the same answers re-scored by lm-eval's IFEval checkers (where they have a counterpart)
        a = results["aligned"]["lm_eval_ifeval"]
        assert a["compared"] > 0 and a["agree"] + len(a["disagreements"]) == a["compared"]
        assert "## Suite scored by lm-eval's IFEval checkers too" in Path(out.details["report"]).read_text()
    rows = [json.loads(x) for x in (tmp_path / "eval" / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    # the stored pass flags are the checker's verdicts on the stored responses
    for r in rows:
        assert r["aligned"]["response"] == r["baseline"]["response"]
        assert r["aligned"]["passed"] == check_response(r["constraints"], r["aligned"]["response"])
    flat = [v for r in rows for v in r["aligned"]["passed"]]
    assert results["aligned"]["ifeval"]["instruction_accuracy"] == pytest.approx(sum(flat) / len(flat))
    assert Path(out.details["report"]).exists()


def test_report_on_object_storage_with_rounds(s3_bucket):
    """run_dir and report folder in a bucket: training curves and the summary are read from there,
    and the report has one row per round: the round's eval pass rate and its prefer stage's last loss."""
    from rayalign import storage

    run = f"{s3_bucket}/run"
    for r, losses in ((1, [0.7, 0.6]), (2, [0.5, 0.4])):
        storage.write_text(
            f"{run}/round-{r}/prefer/metrics.jsonl",
            "".join(json.dumps({"step": i + 1, "loss": v}) + "\n" for i, v in enumerate(losses)),
        )
    # round 2's eval is the one writing this report: its numbers come from `results`, not the summary
    stages = [
        {
            "name": "eval",
            "id": "round-1/eval",
            "round": 1,
            "stage": "eval",
            "status": "complete",
            "metrics": {"aligned/prompt_accuracy": 0.25, "steps": 3.0},
        }
    ]
    storage.write_json(f"{run}/summary.json", {"run_dir": run, "status": "complete", "stages": stages})
    assert sorted(training_logs(run)) == ["round-1/prefer", "round-2/prefer"]
    scores, _ = instruction_scores(SUITE, ["one two", "Hi", "x, y"])
    results = {
        "models": {"aligned": "m1"},
        "suite": "t",
        "prompts": 3,
        "aligned": {"ifeval": scores},
        "metrics": {"aligned/prompt_accuracy": 0.5},
    }
    report = write_report(f"{run}/round-2/eval/report", results, run_dir=run)
    assert report == f"{run}/round-2/eval/report/report.md"
    text = storage.read_text(report)
    assert "| round | aligned/prompt_accuracy | prefer/loss |" in text
    assert "| 1 | 0.250 | 0.600 |" in text and "| 2 | 0.500 | 0.400 |" in text
    assert "| round-1/eval | eval | complete |" in text
    for png in ("ifeval_by_kind.png", "train_round-1_prefer.png", "train_round-2_prefer.png"):
        assert storage.read_bytes(f"{run}/round-2/eval/report/plots/{png}")[:4] == b"\x89PNG"


@pytest.mark.timeout(300)
def test_eval_logged_to_mlflow_and_wandb(tmp_path, monkeypatch):
    """`report_to` on eval: the headline metrics read back equal to the stage's result, and the
    report folder (tables, plots) arrives as an artifact."""
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    cfg = EvalConfig(
        model="tiny-random:llama",
        output=str(tmp_path / "eval"),
        limit=4,
        params={"max_tokens": 8},
        report_to=["mlflow", "wandb"],
    )
    out = run_eval(cfg, log=lambda *_: None)
    assert out.metrics and "aligned/prompt_accuracy" in out.metrics

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("rayalign").experiment_id])
    assert [r.info.run_name for r in runs] == ["eval-eval"]
    run = runs[0]
    for key, value in out.metrics.items():
        assert [m.value for m in client.get_metric_history(run.info.run_id, key)] == [pytest.approx(value)], key
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/report.md" in names

    # W&B offline: one run file whose records hold the metrics and the report artifact's manifest
    [run_file] = list((tmp_path / "wb").rglob("run-*.wandb"))
    blob = run_file.read_bytes()
    assert b"eval-eval-report" in blob and b"report.md" in blob
    assert all(key.encode() in blob for key in out.metrics)


def test_models_run_in_process_with_the_configured_torch_threads(tmp_path):
    """The eval stage runs its models here with `torch_threads` threads (default 1: a thread without a
    free core slows every step), and gives the process its own thread count back afterwards."""
    import torch

    from rayalign.eval.stage import on_device

    before = torch.get_num_threads()
    for threads in (1, 2):
        cfg = EvalConfig(model="m", output=str(tmp_path), torch_threads=threads)
        assert on_device(cfg, torch.get_num_threads) == threads
        assert torch.get_num_threads() == before
    assert EvalConfig(model="m", output=str(tmp_path)).torch_threads == 1
    assert "torch_threads" not in EvalConfig(model="m", output=str(tmp_path)).hash_data()  # a resource, not a result


@pytest.mark.timeout(300)
def test_an_adapter_checkpoint_is_scored_on_its_base_and_the_baseline_runs_without_it(tmp_path):
    """A preference stage run with `peft` and no merge saves an adapter folder as its checkpoint; the
    eval's `adapter` applies it to the aligned model only. The answers must be exactly what the engine
    gives with and without the adapter, and an adapter set on the shared engine (it would reach the
    baseline too) is refused."""
    import torch

    from rayalign.config import ConfigError
    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
    from rayalign.models.aligner import add_aligner, save_aligner
    from rayalign.models.loader import load_model

    model = add_aligner(load_model("tiny-random:llama"), tokens=2, start_layer=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # nonzero gates: the adapter really changes the answers
        model.aligner.gate.copy_(torch.randn(model.aligner.gate.shape, generator=g))
        model.aligner.prefix.copy_(torch.randn(model.aligner.prefix.shape, generator=g))
    adapter = str(save_aligner(model, tmp_path / "adapter"))

    params = {"max_tokens": 10}
    cfg = EvalConfig(
        model="tiny-random:llama",
        adapter=adapter,
        baseline_model="tiny-random:llama",
        output=str(tmp_path / "eval"),
        limit=6,
        params=params,
    )
    out = run_eval(cfg, log=lambda *_: None)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "responses.jsonl").read_text().splitlines()]

    def answers(ecfg: EngineConfig) -> list[str]:
        engine = make_engine(ecfg)
        sp = SamplingParams(**params)
        got = engine.generate(
            [GenRequest(messages=[{"role": "user", "content": r["prompt"]}], params=sp) for r in rows]
        )
        engine.close()
        return [r.texts[0] for r in got]

    assert [r["aligned"]["response"] for r in rows] == answers(EngineConfig(model="tiny-random:llama", adapter=adapter))
    assert [r["baseline"]["response"] for r in rows] == answers(EngineConfig(model="tiny-random:llama"))
    assert any(r["aligned"]["response"] != r["baseline"]["response"] for r in rows)
    results = json.loads(Path(out.details["results"]).read_text())
    assert results["adapter"] == adapter
    assert results["models"] == {"aligned": f"tiny-random:llama + adapter {adapter}", "baseline": "tiny-random:llama"}
    assert f"- aligned: `tiny-random:llama + adapter {adapter}`" in Path(out.details["report"]).read_text()

    with pytest.raises((ConfigError, ValueError), match="baseline too; set the eval's own `adapter`"):
        EvalConfig(model="m", output=str(tmp_path), engine={"adapter": adapter})
