"""Rounds (`repeat`): two sample → clair → reference → prefer → eval rounds on the tiny pipeline's
stages, each round from the previous round's policy; a run SIGKILLed in round 2 and resumed ends
with the summary of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rayalign.pipeline import Entry, Scope, StageSpec, Step, load_pipeline, resolve, steps
from rayalign.results import StageResult

REPO = Path(__file__).resolve().parents[2]
RAYALIGN = str(Path(sys.executable).parent / "rayalign")
POLICY = "${round.prev.prefer.checkpoint | stages.sft.checkpoint}"


def rounds_pipeline(tmp_path: Path, run_dir: Path) -> Path:
    """pipeline-tiny's sft, then its sample/clair/reference/prefer plus an eval, repeated twice."""
    tiny = {s["name"]: s for s in yaml.safe_load((REPO / "rayjobs/configs/pipeline-tiny.yaml").read_text())["stages"]}
    sft = tiny["sft"]
    sft["config"].update(
        model="${defaults.model}", data={"inputs": ["rayjobs/data/tiny/chat.jsonl"], "max_length": 256, "seq_len": 256}
    )
    group = [tiny[n] for n in ("sample", "clair", "reference", "prefer")]
    group[0]["config"]["model"] = POLICY  # sampling is seeded (params.seed): runs are comparable
    group[2]["config"]["model"] = group[3]["config"]["model"] = POLICY
    evaluate = {
        "name": "eval",
        "stage": "eval",
        "config": {
            "model": "${stages.prefer.checkpoint}",
            "limit": 4,
            "params": {"temperature": 0.0, "max_tokens": 8},
            "run_dir": "${run_dir}",
        },
    }
    doc = {
        "run_dir": str(run_dir),
        "defaults": {"model": "tiny-random:llama"},
        "start_ray": False,
        "stages": [sft, {"repeat": {"times": 2, "stages": [*group, evaluate]}}],
    }
    p = tmp_path / "rounds.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_round_references_by_hand(tmp_path):
    """Round 1's `round.prev` falls back to sft; round 2 reads round 1's prefer; a group stage means
    this round's instance; after the group a name means the last round's."""
    spec = StageSpec(name="sample", stage="sample")
    entries = {
        "sft": Entry({}, StageResult(stage="sft", checkpoint="ck/sft")),
        "round-1/prefer": Entry({}, StageResult(stage="prefer", checkpoint="ck/r1")),
        "round-2/clair": Entry({"output": "run/round-2/clair"}, StageResult(stage="clair")),
    }
    names = {"sft": "sft", "prefer": "round-1/prefer", "clair": "round-2/clair"}
    group = ("sample", "clair", "prefer")
    r1 = Scope("run", {}, entries, names, Step(spec, 1, 2, group))
    r2 = Scope("run", {}, entries, names, Step(spec, 2, 2, group))
    assert resolve("${" + POLICY[2:], r1, "x") == ("ck/sft", frozenset({"sft"}))
    assert resolve("${" + POLICY[2:], r2, "x") == ("ck/r1", frozenset({"round-1/prefer"}))
    assert (
        resolve("${stages.clair.output}/data r${round.index}/${round.times}", r2, "x")[0]
        == "run/round-2/clair/data r2/2"
    )
    with pytest.raises(Exception, match="comes later in this round"):
        resolve("${stages.prefer.checkpoint}", r2, "x")
    after = Scope("run", {}, entries, names, Step(StageSpec(name="final", stage="eval")))
    assert resolve("${stages.prefer.checkpoint}", after, "x")[0] == "ck/r1"


def test_steps_and_overrides(tmp_path):
    p = rounds_pipeline(tmp_path, tmp_path / "run")
    pipe = load_pipeline(p, ["stages.rounds.times=3", "stages.prefer.config.max_steps=2"])
    ids = [s.id for s in steps(pipe)]
    assert ids[0] == "sft" and len(ids) == 1 + 3 * 5 and ids[-1] == "round-3/eval" and ids[1] == "round-1/sample"
    assert all(s.spec.config["max_steps"] == 2 for s in steps(pipe) if s.spec.name == "prefer")


def comparable(summary: dict, run_dir: Path) -> list[tuple]:
    rows = []
    for s in summary["stages"]:
        metrics = {
            k: round(v, 4)
            for k, v in s["metrics"].items()
            if k not in ("seconds", "tokens_per_s") and "per_s" not in k and "time" not in k
        }
        ckpt = str(s["checkpoint"]).replace(str(run_dir), "RUN") if s["checkpoint"] else None
        rows.append(
            (s["id"], s["status"], json.dumps(s["counts"], sort_keys=True), ckpt, json.dumps(metrics, sort_keys=True))
        )
    return rows


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_rounds_killed_in_round_two_resume_like_uninterrupted(tmp_path):
    env = {**os.environ, "RAYALIGN_TORCH_THREADS": "1"}
    whole = tmp_path / "whole"
    p = rounds_pipeline(tmp_path, whole)
    out = subprocess.run([RAYALIGN, "run", str(p)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ref = json.loads((whole / "summary.json").read_text())
    ids = [s["id"] for s in ref["stages"]]
    assert ids == ["sft"] + [
        f"round-{r}/{n}" for r in (1, 2) for n in ("sample", "clair", "reference", "prefer", "eval")
    ]
    by = {s["id"]: s for s in ref["stages"]}
    rec = {i: json.loads((whole / i / "stage.json").read_text()) for i in ids}
    # each round starts from the previous round's policy; round 1 from sft
    assert rec["round-1/sample"]["config"]["model"] == by["sft"]["checkpoint"]
    assert (
        rec["round-2/sample"]["config"]["model"]
        == rec["round-2/prefer"]["config"]["train"]["model"]  # prefer nests its training run
        == by["round-1/prefer"]["checkpoint"]
    )
    assert rec["round-2/prefer"]["config"]["train"]["data"]["path"] == str(whole / "round-2" / "reference")
    assert by["round-2/prefer"]["checkpoint"].startswith(str(whole / "round-2" / "prefer"))
    assert ref["final_model"] == by["round-2/prefer"]["checkpoint"]
    report = (whole / "round-2" / "eval" / "report" / "report.md").read_text()
    acc = [by[f"round-{r}/eval"]["metrics"]["aligned/prompt_accuracy"] for r in (1, 2)]
    assert "## After every round" in report and f"| 1 | {acc[0]:.3f} |" in report and f"| 2 | {acc[1]:.3f} |" in report

    killed = tmp_path / "killed"
    p2 = rounds_pipeline(tmp_path, killed)
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - the child writes it until killed below
    proc = subprocess.Popen([RAYALIGN, "run", str(p2)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    victim, deadline = None, time.time() + 400
    while victim is None:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "round 2 never started"
        for name in ("sample", "clair", "reference", "prefer", "eval"):
            rec2 = killed / "round-2" / name / "stage.json"
            if rec2.exists() and '"running"' in rec2.read_text():
                victim = name
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    assert json.loads((killed / "round-2" / victim / "stage.json").read_text())["status"] == "running"
    again = subprocess.run([RAYALIGN, "run", str(p2)], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text[-4000:]
    assert f"{victim} ({rec['round-2/' + victim]['stage']}) round 2/2: resuming an unfinished run" in text
    assert "sample (sample) round 1/2: already complete" in text
    resumed = json.loads((killed / "summary.json").read_text())
    assert comparable(resumed, killed) == comparable(ref, whole)
    skipped = {s["id"]: s["skipped"] for s in resumed["stages"]}
    assert all(skipped[i] for i in ids[: 1 + 5]) and not skipped[f"round-2/{victim}"]
