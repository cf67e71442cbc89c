"""Eval statistics by hand-worked cases, the results.json shape, the gate and the pipeline's use of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from rayalign.eval import stats
from rayalign.pipeline import load_pipeline, run_pipeline
from rayalign.pipeline.runner import failed_gates, final_model


def test_rate_degenerate_and_normal_approximation():
    # every value 1: every resample has mean 1, so the interval is exactly [1, 1]
    assert stats.rate([True] * 30) == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 30}
    # 200 of 400: the bootstrap interval matches the normal one, 0.5 ± 1.96·sqrt(0.25/400) = ±0.049
    r = stats.rate([1] * 200 + [0] * 200)
    half = 1.96 * math.sqrt(0.25 / 400)
    assert r["mean"] == 0.5 and r["n"] == 400
    assert r["lo"] == pytest.approx(0.5 - half, abs=0.01) and r["hi"] == pytest.approx(0.5 + half, abs=0.01)
    assert stats.rate([]) == {"mean": 0.0, "lo": 0.0, "hi": 1.0, "n": 0}


def test_seeded_determinism():
    x = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0]
    assert stats.rate(x) == stats.rate(x) and stats.paired(x, x[::-1]) == stats.paired(x, x[::-1])
    # the seed really drives the resampling (few resamples: the percentiles differ between seeds)
    assert stats.rate(x, n_boot=20, seed=1) != stats.rate(x, n_boot=20, seed=2)


def test_paired_identical_constant_and_clearly_different():
    a = [1, 0, 1, 0, 1, 1, 0, 0, 1, 0] * 4
    same = stats.paired(a, a)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p_value": 1.0, "n": 40, "within_noise": True}
    # every prompt gains exactly 1: the interval is [1, 1] and no resample is as far from 1 as 1 is
    # from 0, so p is the smallest the bootstrap gives, 1 / (N_BOOT + 1)
    one = stats.paired([1] * 25, [0] * 25)
    assert (one["diff"], one["lo"], one["hi"]) == (1.0, 1.0, 1.0)
    assert one["p_value"] == pytest.approx(1 / (stats.N_BOOT + 1)) and not one["within_noise"]
    # a gain on 30 of 60 prompts and no loss: far outside noise
    big = stats.paired([1] * 30 + [0] * 30, [0] * 60)
    assert big["diff"] == 0.5 and big["lo"] > 0.3 and big["p_value"] < 0.001
    # one prompt of 60 better: within noise, p large
    small = stats.paired([1] + [0] * 59, [0] * 60)
    assert small["within_noise"] and small["lo"] <= 0 <= small["hi"] and small["p_value"] > 0.3
    # the paired interval is narrower than treating the two models as independent samples: the
    # same 20 prompts pass for both, and 10 more for a
    a2, b2 = [1] * 30 + [0] * 30, [1] * 20 + [0] * 40
    d = stats.paired(a2, b2)
    ra, rb = stats.rate(a2), stats.rate(b2)
    assert d["hi"] - d["lo"] < (ra["hi"] - ra["lo"]) + (rb["hi"] - rb["lo"])
    with pytest.raises(ValueError, match="same items"):
        stats.paired([1, 0], [1])


SUITE = [
    {"id": "a", "prompt": "p", "constraints": [{"kind": "no_commas"}, {"kind": "lowercase"}]},
    {"id": "b", "prompt": "q", "constraints": [{"kind": "no_commas"}]},
]


def test_eval_stats_shape_and_values():
    """aligned passes both prompts fully; baseline passes only b: prompt level 1.0 vs 0.5, instruction
    level 3/3 vs 1/3, paired diff 0.5 with n 2."""
    passes = {"aligned": [[True, True], [True]], "baseline": [[False, False], [True]]}
    s = stats.eval_stats(SUITE, passes, "baseline", {"name": "x", "path": "/x", "reads": 1})
    assert set(s) == {"rates", "paired", "paired_kinds", "paired_groups", "suite"}
    assert s["suite"] == {"name": "x", "path": "/x", "reads": 1}
    al, bl = s["rates"]["aligned"], s["rates"]["baseline"]
    assert set(al) == {"prompt_level", "instruction_level", "kinds"}
    assert al["prompt_level"]["mean"] == 1.0 and bl["prompt_level"]["mean"] == 0.5
    assert al["instruction_level"]["n"] == 3 and bl["instruction_level"]["mean"] == pytest.approx(1 / 3)
    assert bl["kinds"] == {
        "lowercase": {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 1},
        "no_commas": {"mean": 0.5, "lo": 0.0, "hi": 1.0, "n": 2},
    }
    p = s["paired"]["aligned - baseline"]
    assert set(p) == {"metric", "diff", "lo", "hi", "p_value", "n", "within_noise"}
    assert p["metric"] == "prompt_level" and p["diff"] == 0.5 and p["n"] == 2
    for r in (al["prompt_level"], *bl["kinds"].values()):
        assert set(r) == {"mean", "lo", "hi", "n"} and r["lo"] <= r["mean"] <= r["hi"]
    # per kind, instruction level: no_commas 2 of 2 against 1 of 2, lowercase 1 of 1 against 0 of 1;
    # seen kinds 3 of 3 against 1 of 3 (both kinds are trained ones); no unseen kind in this suite
    pk = s["paired_kinds"]["aligned - baseline"]
    assert (pk["no_commas"]["diff"], pk["no_commas"]["n"]) == (0.5, 2)
    assert (pk["lowercase"]["diff"], pk["lowercase"]["lo"], pk["lowercase"]["hi"]) == (1.0, 1.0, 1.0)
    groups = s["paired_groups"]["aligned - baseline"]
    assert set(groups) == {"seen"} and groups["seen"]["diff"] == pytest.approx(2 / 3) and groups["seen"]["n"] == 2
    assert stats.kinds_down(s) == {}
    bare = stats.eval_stats(SUITE, {"aligned": passes["aligned"]}, None, {})
    assert bare["paired"] == bare["paired_kinds"] == bare["paired_groups"] == {}
    json.dumps(s)  # plain JSON types only
    md = "\n".join(stats.stats_md(s))
    assert "**aligned - baseline** (prompt_level, paired over 2 prompts): +0.500" in md
    # the baseline's column first, whatever order the rates came in
    assert "| kind | n | baseline | aligned |" in md
    assert "| no_commas | 2 | 0.500 [0.000, 1.000] | 1.000 [1.000, 1.000] |" in md


def test_paired_ratio_pools_a_prompts_constraints_and_resamples_prompts():
    """Σ(a − b) / Σm over prompts: 3 prompts holding 2, 1 and 1 constraints of the kinds, passed 2/0,
    0/1 and 1/1 by A/B: (2 + (−1) + 0) / 4 = 0.25; `paired` is the case of one unit per item."""
    d = stats.paired_ratio([2, 0, 1], [0, 1, 1], [2, 1, 1])
    assert d["diff"] == 0.25 and d["n"] == 3 and d["lo"] <= 0.25 <= d["hi"]
    # every resample's value is Σ(a − b) / Σm of some multiset of the three prompts
    ratios = {(2 * i - j) / (2 * i + j + k) for i in range(4) for j in range(4) for k in range(4) if i + j + k == 3}
    assert min(ratios) <= d["lo"] and d["hi"] <= max(ratios)
    assert stats.paired_ratio([1, 0, 1], [0, 0, 1], [1, 1, 1]) == stats.paired([1, 0, 1], [0, 0, 1])
    with pytest.raises(ValueError, match="a size per item"):
        stats.paired_ratio([1], [1], [1, 1])


def test_a_kind_down_beyond_noise_is_named_and_the_unseen_kinds_are_paired():
    """The baseline passes all 10 min_words constraints, the aligned model none (-1.0, interval
    [-1, -1]: down beyond noise); no_commas 5 of 10 each way on other prompts (within noise)."""
    suite = [{"id": f"m{i}", "prompt": "p", "constraints": [{"kind": "min_words"}]} for i in range(10)]
    suite += [{"id": f"c{i}", "prompt": "p", "constraints": [{"kind": "no_commas"}]} for i in range(10)]
    passes = {
        "aligned": [[False]] * 10 + [[i % 2 == 0] for i in range(10)],
        "baseline": [[True]] * 10 + [[i % 2 == 1] for i in range(10)],
    }
    s = stats.eval_stats(suite, passes, "baseline", {})
    pk = s["paired_kinds"]["aligned - baseline"]
    assert (pk["min_words"]["diff"], pk["min_words"]["lo"], pk["min_words"]["hi"]) == (-1.0, -1.0, -1.0)
    assert pk["no_commas"]["diff"] == 0.0 and pk["no_commas"]["within_noise"]
    assert stats.kinds_down(s) == {"aligned - baseline": ["min_words"]}
    groups = s["paired_groups"]["aligned - baseline"]
    assert groups["unseen"]["diff"] == -1.0 and groups["unseen"]["n"] == 10  # min_words is never trained
    assert groups["seen"]["diff"] == 0.0
    md = "\n".join(stats.stats_md(s))
    assert "Kinds down beyond noise (aligned - baseline: the paired interval below 0): min_words." in md
    assert "| min_words | 10 | 1.000 [1.000, 1.000] | 0.000 [0.000, 0.000] | -1.000 [-1.000, -1.000] **down** |" in md
    assert "**aligned - baseline**, unseen kinds (instruction level, paired over 10 prompts): -1.000" in md


def test_gate_passes_fails_and_explains():
    wins = {"aligned": [[True]] * 30 + [[False]] * 30, "baseline": [[False]] * 60}
    suite = [{"constraints": [{"kind": "no_commas"}]}] * 60
    g = stats.gate(stats.GateConfig(), suite, wins, "aligned", "baseline")
    assert g["passed"] and g["lower_bound"] > 0.3 and "is above +0.000" in g["reason"]
    g = stats.gate(stats.GateConfig(min_lower_bound=0.45), suite, wins, "aligned", "baseline")
    assert not g["passed"] and "not above +0.450" in g["reason"]
    g = stats.gate(stats.GateConfig(), suite, {"aligned": wins["aligned"]}, "aligned", None)
    assert not g["passed"] and "baseline_model" in g["reason"]
    # instruction level compares each prompt's share of constraints passed
    two = [{"constraints": [{"kind": "a"}, {"kind": "b"}]}] * 40
    g = stats.gate(
        stats.GateConfig(metric="instruction_level"),
        two,
        {"m": [[True, False]] * 40, "b": [[False, False]] * 40},
        "m",
        "b",
    )
    assert g["passed"] and g["diff"] == 0.5 and g["lower_bound"] == 0.5


def test_suite_reads_are_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path))
    assert stats.record_read("heldout", SUITE) == 1 and stats.record_read("heldout", SUITE) == 2
    assert stats.record_read("heldout", SUITE[:1]) == 1  # other content, another count
    assert sum(json.loads((tmp_path / "suite_reads.json").read_text()).values()) == 3


def test_final_model_withheld_when_a_gate_failed():
    from rayalign.pipeline.records import StageSummary
    from rayalign.results import StageResult, Status

    def summary(stage: str, metrics: dict, checkpoint: str | None = None, details: dict | None = None):
        result = StageResult(stage=stage, checkpoint=checkpoint, metrics=metrics, details=details or {})
        return StageSummary(
            name=stage, id=stage, stage=stage, status=Status.COMPLETE, skipped=False, config_hash="h",
            checkpoint=checkpoint, metrics=metrics, result=result,
        )  # fmt: skip

    ok = summary("eval", {"gate/passed": 1.0})
    bad = summary("eval", {"gate/passed": 0.0}, details={"gate": {"reason": "lb -0.1"}})
    train = summary("prefer", {}, checkpoint="/ckpt")
    assert final_model(load_pipeline_stub(), [train, ok], None) == "/ckpt"
    assert final_model(load_pipeline_stub(), [train, bad], None) is None
    assert failed_gates([train, bad]) == ["eval: gate failed (lb -0.1)"]


def load_pipeline_stub():
    from rayalign.pipeline.spec import PipelineConfig

    return PipelineConfig(run_dir="unused", stages=[])


@pytest.mark.timeout(120)
def test_pipeline_withholds_final_model_when_eval_gate_fails(tmp_path, monkeypatch):
    """A real pipeline: the eval stage compares the tiny model with itself (greedy: identical answers,
    paired diff exactly 0), so a gate asking for a lower bound above 0 fails; the run completes, the
    stage records the failed gate, and summary.json withholds `final_model` and says why."""
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    pipe = {
        "run_dir": str(tmp_path / "run"),
        "start_ray": False,
        "stages": [
            {
                "name": "eval",
                "stage": "eval",
                "config": {
                    "model": "tiny-random:llama",
                    "baseline_model": "tiny-random:llama",
                    "suite": "heldout",
                    "limit": 4,
                    "params": {"max_tokens": 6},
                    "gate": {"metric": "prompt_level", "min_lower_bound": 0.0},
                },
            }
        ],
        "final_model": "tiny-random:llama",
    }
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(pipe))
    summary = run_pipeline(load_pipeline(path))
    assert summary["status"] == "complete" and summary["final_model"] is None
    assert summary["final_model_withheld"].startswith("eval: gate failed (aligned - baseline prompt_level: +0.000")
    results = json.loads(Path(tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["gate"]["passed"] is False and results["metrics"]["gate/passed"] == 0.0
    assert results["stats"]["paired"]["aligned - baseline"]["within_noise"] is True
    assert results["stats"]["suite"]["name"] == "heldout" and results["stats"]["suite"]["reads"] == 1
    report = (tmp_path / "run" / "eval" / "report" / "report.md").read_text()
    assert "## Promotion gate" in report and "**FAILED**" in report and "## Seen and unseen kinds" in report
    assert "## Format leaks and repetition" in report and "## Sample answers (4)" in report
