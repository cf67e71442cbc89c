"""`prefer`, `reward` and `score` on the tiny random Llama and the bundled pairs (220 good + 7 bad rows).

Every run is short (a handful of steps at a high learning rate) and all but one train in-process;
the one Ray Train run checks FSDP2 over 2 gloo workers against the single-process run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.config import ConfigError
from rayalign.objectives.accuracy import load_rows, preference_accuracy
from rayalign.prefer.stages import PreferConfig, RewardConfig, run_prefer, run_reward

PAIRS = str(Path(__file__).resolve().parents[2] / "rayjobs" / "data" / "pairs.jsonl")
TINY = "tiny-random:llama"
QUIET = dict(progress=False, log_every=1)


@pytest.fixture
def reference_dir(pairs_reference) -> str:
    return str(pairs_reference)


def prefer_cfg(out: Path, **kw) -> PreferConfig:
    base = dict(
        model=TINY,
        output_dir=str(out),
        micro_batch_size=8,
        max_steps=12,
        seed=0,
        eval_pairs=0,
        optim={"lr": 3e-3, "min_lr_ratio": 1.0},
        **QUIET,
    )
    base.update(kw)
    return PreferConfig.model_validate(base)


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.timeout(600)
def test_apo_zero_raises_pair_accuracy_from_half_to_over_point_nine(
    reference_dir, tmp_path, tiny_model_path, tokenizer
):
    """Untrained, the policy IS the reference: every log-ratio margin is 0 (a tie, ½) → accuracy 0.5.

    12 APO-zero steps of 8 pairs at lr 3e-3 separate the held-in pairs: accuracy ≥ 0.9.
    """
    from transformers import AutoModelForCausalLM

    rows = load_rows(reference_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    before = preference_accuracy(base, rows, tokenizer.pad_token_id)
    assert before["accuracy"] == pytest.approx(0.5, abs=0.02)

    out = tmp_path / "apo"
    result = run_prefer(prefer_cfg(out, data={"path": reference_dir}, eval_pairs=220), log=lambda m: None)
    assert result.metrics["heldin_pairs"] == 220
    assert result.metrics["heldin_accuracy"] >= 0.9
    assert result.details["reference_mode"] == "precomputed" and result.details["data"] == reference_dir
    assert Path(result.checkpoint, "config.json").exists()
    assert "time" not in result.metrics  # a wall-clock stamp is not a metric
    log = metrics(out)
    assert len(log) == 12 and result.metrics["step"] == 12
    for key in ("rewards_chosen", "rewards_rejected", "margins", "accuracy"):
        assert key in log[0], key
    assert log[0]["loss"] == pytest.approx(1.0, abs=1e-4)  # (1 − σ(0)) + σ(0) at the reference
    assert log[-1]["loss"] < 0.5 and log[-1]["margins"] > 0
    assert log[-1]["rewards_chosen"] > 0 > log[-1]["rewards_rejected"]  # chosen up, rejected down


@pytest.mark.timeout(600)
def test_precomputed_reference_equals_on_the_fly(reference_dir, tmp_path):
    """DPO for 3 steps: reference log-probs read from the `reference` stage's rows vs computed by a frozen
    reference model inside the loop (raw inputs, only tokenised) — the same loss curve to ≤ 1e-5."""
    common = dict(objective={"name": "dpo", "beta": 0.1}, micro_batch_size=4, max_steps=3)
    pre = run_prefer(prefer_cfg(tmp_path / "pre", data={"path": reference_dir}, **common), log=lambda m: None)
    fly = run_prefer(
        prefer_cfg(tmp_path / "fly", data={"inputs": [PAIRS]}, reference={"mode": "on_the_fly"}, **common),
        log=lambda m: None,
    )
    assert pre.details["reference_mode"] == "precomputed" and fly.details["reference_mode"] == "on_the_fly"
    assert "ref_chosen_logp" not in load_rows(fly.details["data"], 1)[0]  # the loop really held a reference model
    a, b = metrics(tmp_path / "pre"), metrics(tmp_path / "fly")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5
        assert abs(x["margins"] - y["margins"]) <= 1e-5


@pytest.mark.timeout(600)
def test_prefer_on_ray_train_fsdp2_matches_one_process(ray_cluster, reference_dir, tmp_path):
    """2 Ray Train workers (FSDP2 over gloo, 4 pairs each) vs one process (2 micro-batches of 4): same 8 pairs
    per step, losses normalised by the global pair count → the same loss curve."""
    from rayalign.stages import run_stage

    common = dict(
        model=TINY,
        micro_batch_size=4,
        max_steps=2,
        eval_pairs=0,
        progress=False,
        data={"path": reference_dir},
        optim={"lr": 3e-3, "min_lr_ratio": 1.0},
    )
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    summary = run_stage(
        "prefer",
        data={
            **common,
            "output_dir": str(ray_out),
            "scaling": {"workers": 2, "cpus_per_worker": 0.5, "report_every": 1},
        },
    )
    run_stage("prefer", data={**common, "output_dir": str(local_out), "grad_accum": 2})
    assert Path(summary.checkpoint, "model.safetensors").exists()
    for x, y in zip(metrics(ray_out), metrics(local_out), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
        assert x["margins"] == pytest.approx(y["margins"], abs=1e-4)


@pytest.mark.timeout(600)
def test_reward_model_ranks_chosen_over_rejected_and_scores_rows(reference_dir, tmp_path):
    """15 Bradley–Terry steps → the reward model ranks ≥ 90% of held-in pairs right; `score` then writes a
    reward for every row, quarantines the 7 bad rows (227 = 220 + 7) and agrees on the ranking."""
    from rayalign.prefer.score import ScoreConfig, run_score

    out = tmp_path / "rm"
    result = run_reward(
        RewardConfig.model_validate(
            dict(
                model=TINY,
                output_dir=str(out),
                data={"path": reference_dir},
                micro_batch_size=8,
                max_steps=15,
                optim={"lr": 3e-3, "min_lr_ratio": 1.0},
                eval_pairs=220,
                **QUIET,
            )
        ),
        log=lambda m: None,
    )
    assert result.metrics["heldin_accuracy"] >= 0.9
    assert metrics(out)[0]["loss"] == pytest.approx(0.693, abs=0.05)  # −log σ(≈0) with a fresh head

    scored = run_score(
        ScoreConfig(
            inputs=[PAIRS], output=str(tmp_path / "scores"), model=result.checkpoint, kind="pairs", pool={"workers": 0}
        ),
        log=lambda m: None,
    )
    c = scored.counts
    assert (c.in_, c.ok, c.quarantined, c.out_rows) == (227, 220, 7, 220)
    assert scored.metrics["chosen_win_rate"] >= 0.9

    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "a", "prompt": "What is the capital of Canada?", "response": "The capital of Canada is Ottawa."},
                {
                    "id": "b",
                    "messages": [{"role": "user", "content": "What is the capital of Canada?"}],
                    "response": "I don't know.",
                },
                {"id": "no-response", "prompt": "Hi"},
            ]
        )
        + "\n"
    )
    one = run_score(
        ScoreConfig(
            inputs=[str(responses)], output=str(tmp_path / "one"), model=result.checkpoint, pool={"workers": 0}
        ),
        log=lambda m: None,
    )
    assert one.counts.by_reason == {"missing_field": 1}
    from rayalign.data.shards import read_dataset

    rewards = {r["id"]: r["reward"] for r in read_dataset(tmp_path / "one").to_pylist()}
    assert rewards["a"] > rewards["b"]


def test_stage_and_objective_mismatches_fail_before_any_work(reference_dir, tmp_path):
    with pytest.raises(ConfigError, match="rayalign reward"):
        run_prefer(prefer_cfg(tmp_path / "x", objective={"name": "reward"}, data={"path": reference_dir}))
    with pytest.raises(ConfigError, match="rayalign prefer"):
        run_reward(RewardConfig(model=TINY, output_dir=str(tmp_path / "y"), objective={"name": "dpo"}))
    with pytest.raises(ConfigError, match="on_the_fly"):
        run_prefer(prefer_cfg(tmp_path / "z", data={"path": reference_dir}, reference={"mode": "on_the_fly"}))
    with pytest.raises(ConfigError, match="allowed: beta, gamma"):
        run_prefer(prefer_cfg(tmp_path / "w", objective={"name": "simpo", "lam": 1}, data={"path": reference_dir}))
