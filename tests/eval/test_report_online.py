"""The eval report on a policy-gradient (GRPO) stage's per-step metrics: which keys go into which plot,
the reward / pass-rate line, and the PNGs; a preference stage gets none of these plots."""

from __future__ import annotations

import json
from pathlib import Path

from rayalign.eval.report import online_keys, training_logs, write_report
from rayalign.eval.stage import instruction_scores

SUITE = [{"id": "a", "prompt": "p", "constraints": [{"kind": "no_commas"}]}]


def grpo_row(step: int) -> dict:
    return {
        "step": step,
        "loss": 0.1 - 0.01 * step,
        "reward_mean": 0.2 + 0.1 * step,
        "reward_std": 0.3,
        "pass_rate": 0.1 * step,
        "kl": 0.001 * step,
        "response_length": 40 + step,
        "clip_fraction": 0.05,
        "rollout_tokens_per_s": 100.0,
        "tokens_per_s": 250.0,
        "reward/constraints": 0.5 + 0.05 * step,
        "reward/length": -0.1,
        "reward/judge/unparseable": 3,  # a running count, not a per-step reward: not plotted
        "lr": 1e-6,
    }


def test_online_keys_by_group():
    rows = [grpo_row(s) for s in range(1, 4)]
    assert online_keys(rows) == {
        "rewards": ["reward_mean", "reward_std", "pass_rate", "reward/constraints", "reward/length"],
        "kl": ["kl", "clip_fraction"],
        "length": ["response_length"],
        "throughput": ["rollout_tokens_per_s", "tokens_per_s"],
    }
    # a partial log plots what it has; a preference or SFT log (loss, margins, tokens/s) none of it
    assert online_keys([{"step": 1, "loss": 0.5, "kl": 0.2}]) == {"kl": ["kl"]}
    assert online_keys([{"step": 1, "loss": 0.5, "margins": 0.1, "tokens_per_s": 300.0}]) == {}


def test_report_plots_grpo_metrics(tmp_path):
    run = tmp_path / "run"
    (run / "grpo").mkdir(parents=True)
    (run / "grpo" / "metrics.jsonl").write_text("".join(json.dumps(grpo_row(s)) + "\n" for s in range(1, 6)))
    (run / "prefer").mkdir()
    (run / "prefer" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.69, "margins": 0.1, "tokens_per_s": 300.0}) + "\n" for s in (1, 2))
    )
    assert sorted(training_logs(run)) == ["grpo", "prefer"]
    scores, _ = instruction_scores(SUITE, ["x y"])
    results = {"models": {"aligned": "m"}, "suite": "t", "prompts": 1, "aligned": {"ifeval": scores}}
    text = Path(write_report(tmp_path / "report", results, run_dir=run)).read_text()

    # reward_mean 0.3 → 0.7, pass_rate 0.1 → 0.5 over steps 1..5; loss 0.09 → 0.05
    assert "reward_mean 0.300 → 0.700 over 5 steps; pass_rate 0.100 → 0.500 over 5 steps" in text
    assert "5 logged steps; loss 0.090 → 0.050" in text
    plots = tmp_path / "report" / "plots"
    for group in ("rewards", "kl", "length", "throughput"):
        assert f"(plots/{group}_grpo.png)" in text
        assert (plots / f"{group}_grpo.png").read_bytes()[:4] == b"\x89PNG"
    assert (plots / "train_prefer.png").exists() and not (plots / "throughput_prefer.png").exists()
