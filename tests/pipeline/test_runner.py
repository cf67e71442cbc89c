"""The pipeline runner on prepare-only pipelines, in-process (pools with workers: 0, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rayalign.config import ConfigError
from rayalign.pipeline import (
    Entry,
    Scope,
    apply_pipeline_overrides,
    interpolate,
    load_pipeline,
    main,
    read_record,
    resolve,
    run_pipeline,
    validate_pipeline,
)
from rayalign.results import StageResult

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "rayjobs" / "data"
INLINE = {"workers": 0, "shard_rows": 64}


def write_pipeline(tmp_path: Path, stages: list[dict], **top) -> Path:
    doc = {
        "run_dir": str(tmp_path / "run"),
        "defaults": {"model": "tiny-random:llama"},
        "start_ray": False,
        "stages": stages,
        **top,
    }
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def chat_stage() -> dict:
    return {
        "name": "chat",
        "stage": "prepare",
        "config": {
            "kind": "chat",
            "inputs": [str(DATA / "chat.jsonl")],
            "max_length": 256,
            "seq_len": 512,
            "pool": INLINE,
        },
    }


def two_stage(tmp_path: Path) -> Path:
    return write_pipeline(
        tmp_path,
        [
            chat_stage(),
            {
                "name": "pairs",
                "stage": "prepare",
                "config": {
                    "kind": "pairs",
                    "inputs": [str(DATA / "pairs.jsonl")],
                    "max_length": "${stages.chat.max_length}",
                    "output": "${run_dir}/pairs-out",
                    "pool": INLINE,
                },
            },
        ],
    )


def test_interpolation_rules():
    sft = Entry(
        {"output": "runs/a/sft", "lr": 1e-4}, StageResult(stage="sft", checkpoint="ck/7", metrics={"loss": 1.5})
    )
    ctx = Scope("runs/a", {"model": "m"}, {"sft": sft}, {"sft": "sft"})
    # a whole-string reference keeps its type; an embedded one is pasted as text
    assert interpolate("${stages.sft.metrics.loss}", ctx, "x") == 1.5
    assert interpolate("${stages.sft.lr}", ctx, "x") == 1e-4  # falls back to the config
    assert interpolate({"a": ["${run_dir}/eval", "${defaults.model}"]}, ctx, "x") == {"a": ["runs/a/eval", "m"]}
    assert interpolate("${stages.sft.checkpoint}", ctx, "x") == "ck/7"  # result before config
    with pytest.raises(ConfigError, match="not an earlier stage"):
        interpolate("${stages.prefer.checkpoint}", ctx, "stages[3] (eval).config.model")
    with pytest.raises(ConfigError, match="no 'nope'"):
        interpolate("${stages.sft.nope}", ctx, "x")
    # resolution returns what it read (the runner hashes those stages into the reader's hash)
    assert resolve({"a": "${stages.sft.checkpoint}", "b": "${run_dir}"}, ctx, "x") == (
        {"a": "ck/7", "b": "runs/a"},
        frozenset({"sft"}),
    )
    assert resolve("${defaults.model}", ctx, "x")[1] == frozenset()


def test_overrides_address_stages_by_name(tmp_path):
    data = {"run_dir": "r", "stages": [{"name": "a", "stage": "prepare", "config": {}}]}
    apply_pipeline_overrides(data, ["stages.a.config.max_length=5", "run_dir=r2"])
    assert data == {"run_dir": "r2", "stages": [{"name": "a", "stage": "prepare", "config": {"max_length": 5}}]}
    with pytest.raises(ConfigError, match="no stage named 'b'; stages: a"):
        apply_pipeline_overrides(data, ["stages.b.config.x=1"])


def test_validation_names_stage_and_field(tmp_path):
    p = write_pipeline(
        tmp_path, [{"name": "chat", "stage": "prepare", "config": {"kind": "chat", "inputs": ["x"], "max_lenght": 3}}]
    )
    with pytest.raises(ConfigError) as e:
        validate_pipeline(load_pipeline(p), str(p))
    msg = str(e.value)
    assert "stages[0] (chat)" in msg and "max_lenght: unknown key" in msg and "max_length" in msg
    p2 = write_pipeline(tmp_path, [{"name": "x", "stage": "no_such_stage"}])
    with pytest.raises(ConfigError, match="unknown stage 'no_such_stage'"):
        validate_pipeline(load_pipeline(p2), str(p2))
    p3 = write_pipeline(tmp_path, [{"name": "a", "stage": "prepare"}, {"name": "a", "stage": "prepare"}])
    with pytest.raises(ConfigError, match="used twice"):
        load_pipeline(p3)


@pytest.mark.timeout(120)
def test_run_skip_and_rerun_on_changed_config(tmp_path, capsys):
    p = two_stage(tmp_path)
    assert main([str(p)]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and [s["name"] for s in summary["stages"]] == ["chat", "pairs"]
    # counts of the bundled sample data (10 / 7 deliberately broken rows), defaults and output rules applied
    chat, pairs = summary["stages"]
    assert chat["counts"]["in"] == 230 and chat["counts"]["ok"] == 220 and chat["output"] == str(run / "chat")
    assert pairs["counts"] == {**pairs["counts"], "in": 227, "ok": 220, "out_rows": 220}
    assert pairs["output"] == str(run / "pairs-out") and 0 < chat["metrics"]["packing_efficiency"] <= 1
    rec = read_record(str(run), "pairs")
    assert (
        rec is not None
        and rec.status == "complete"
        and rec.config["max_length"] == 256
        and rec.config["model"] == "tiny-random:llama"
    )
    assert summary["final_model"] is None  # no training stage

    capsys.readouterr()
    assert main([str(p)]) == 0  # everything skipped
    out = capsys.readouterr().out
    assert out.count("already complete") == 2
    assert all(s["skipped"] for s in json.loads((run / "summary.json").read_text())["stages"])

    assert main([str(p), "stages.pairs.config.max_length=300"]) == 0  # only the changed stage runs
    s3 = json.loads((run / "summary.json").read_text())["stages"]
    assert [s["skipped"] for s in s3] == [True, False] and read_record(str(run), "pairs").config["max_length"] == 300


@pytest.mark.timeout(120)
def failing_pipeline(tmp_path: Path) -> Path:
    """chat, then `broken` (its input file is missing), then `never`."""
    return write_pipeline(
        tmp_path,
        [
            chat_stage(),
            {
                "name": "broken",
                "stage": "prepare",
                "config": {"kind": "prompts", "inputs": [str(tmp_path / "missing.jsonl")], "pool": INLINE},
            },
            {
                "name": "never",
                "stage": "prepare",
                "config": {"kind": "prompts", "inputs": [str(DATA / "prompts.jsonl")], "pool": INLINE},
            },
        ],
    )


def test_failed_stage_stops_run_and_prints_resume(tmp_path, capsys):
    p = failing_pipeline(tmp_path)
    assert main([str(p), "stages.chat.config.max_length=200"]) == 1
    err = capsys.readouterr().err
    assert "stage 'broken' (prepare) failed" in err
    assert f"rayalign run {p} stages.chat.config.max_length=200" in err
    rec = read_record(str(tmp_path / "run"), "broken")
    assert rec is not None and rec.status == "failed" and "missing.jsonl" in (rec.error or "")
    assert read_record(str(tmp_path / "run"), "never") is None
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and [s["status"] for s in summary["stages"]] == ["complete", "failed"]

    # fix the cause and resume: the finished stage is skipped, the failed one and the rest run
    (tmp_path / "missing.jsonl").write_text('{"id": "p0", "prompt": "hi"}\n')
    assert main([str(p), "stages.chat.config.max_length=200"]) == 0
    stages = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    assert [(s["name"], s["skipped"]) for s in stages] == [("chat", True), ("broken", False), ("never", False)]
    assert stages[1]["counts"]["ok"] == 1


def test_final_model_reference(tmp_path):
    p = write_pipeline(
        tmp_path,
        [
            {
                "name": "chat",
                "stage": "prepare",
                "config": {"kind": "prompts", "inputs": [str(DATA / "prompts.jsonl")], "pool": INLINE},
            }
        ],
        final_model="${stages.chat.output}",
    )
    summary = run_pipeline(load_pipeline(p))
    assert summary["final_model"] == str(tmp_path / "run" / "chat")


def test_stage_with_no_output_rows_fails_the_run(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n{"id": "b", "prompt": ""}\n')  # missing field, empty text
    stages = [{"name": "p", "stage": "prepare", "config": {"kind": "prompts", "inputs": [str(bad)], "pool": INLINE}}]
    p = write_pipeline(tmp_path, stages)
    assert main([str(p)]) == 1
    err = capsys.readouterr().err
    assert "read 2 rows but wrote none (quarantined by reason: empty_text: 1, missing_field: 1)" in err
    stages[0]["allow_empty"] = True
    p = write_pipeline(tmp_path, stages)
    assert main([str(p)]) == 0


def test_bad_later_stage_fails_before_anything_runs(tmp_path):
    p = write_pipeline(
        tmp_path,
        [
            {
                "name": "a",
                "stage": "prepare",
                "config": {"kind": "prompts", "inputs": [str(DATA / "prompts.jsonl")], "pool": INLINE},
            },
            {"name": "b", "stage": "prepare", "config": {"kind": "prompts", "inputs": ["x"], "shard_rows": 3}},
        ],
    )
    assert main([str(p)]) == 2
    assert not (tmp_path / "run" / "a").exists()


def a_then_b() -> list[dict]:
    """Two prepare stages: a validates the bundled pairs, b reads a's output."""
    return [
        {
            "name": "a",
            "stage": "prepare",
            "config": {"kind": "pairs", "inputs": [str(DATA / "pairs.jsonl")], "pool": INLINE},
        },
        {
            "name": "b",
            "stage": "prepare",
            "config": {"kind": "pairs", "inputs": ["${stages.a.output}/data"], "pool": INLINE},
        },
    ]


@pytest.mark.timeout(120)
def test_upstream_change_reruns_downstream(tmp_path, capsys):
    """b reads a's output through an unchanged path; when a's config changes, b must not be skipped
    (nor reuse its finished shards): its input count follows a's new output."""
    p = write_pipeline(
        tmp_path,
        [
            *a_then_b(),
            {
                "name": "c",
                "stage": "prepare",
                "config": {"kind": "prompts", "inputs": [str(DATA / "prompts.jsonl")], "pool": INLINE},
            },
        ],
    )
    assert main([str(p)]) == 0
    first = {s["name"]: s for s in json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]}
    assert first["b"]["counts"]["in"] == first["a"]["counts"]["out_rows"] == 220
    capsys.readouterr()
    assert main([str(p), "stages.a.config.max_length=56"]) == 0  # quarantines the longer pairs
    out = capsys.readouterr().out
    second = {s["name"]: s for s in json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]}
    n = second["a"]["counts"]["out_rows"]
    assert 0 < n < 220 and second["a"]["counts"]["by_reason"]["over_length"] == 227 - 7 - n
    assert second["b"]["counts"]["in"] == second["b"]["counts"]["out_rows"] == n
    assert [second[k]["skipped"] for k in "abc"] == [False, False, True]  # c reads nothing of a
    assert "b (prepare): its config or an upstream stage changed" in out


def test_stop_after(tmp_path):
    stage = {"stage": "prepare", "config": {"kind": "prompts", "inputs": [str(DATA / "prompts.jsonl")], "pool": INLINE}}
    p = write_pipeline(tmp_path, [{"name": "one", **stage}, {"name": "two", **stage}])
    assert main([str(p), "--stop-after", "one"]) == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "partial" and [x["name"] for x in s["stages"]] == ["one"]
    assert read_record(str(tmp_path / "run"), "two") is None


def _as_an_earlier_version_wrote_it(run: Path, step: str, upstream: dict[str, str], missing: str) -> str:
    """Rewrite a complete record as a rayalign without option `missing` would have written it: the
    option absent from its config, and the hash that version computed (sha256 of the sorted JSON of
    its hashed options, then of [stage, that, upstream record hashes]). Returns that hash."""
    import hashlib

    from rayalign.pipeline import records
    from rayalign.stages import get_stage

    def sha(blob: str) -> str:
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    rec = read_record(str(run), step)
    assert rec is not None and missing in rec.config
    cfg_cls, _ = get_stage(rec.stage)
    data = cfg_cls.model_validate(rec.config).hash_data()
    del data[missing]
    old = sha(json.dumps([rec.stage, sha(json.dumps(data, sort_keys=True)), sorted(upstream.items())]))
    config = {k: v for k, v in rec.config.items() if k != missing}
    records.write_record(str(run), step, rec.model_copy(update={"config": config, "config_hash": old}))
    return old


@pytest.mark.timeout(120)
def test_records_of_an_earlier_version_are_kept_when_only_new_options_differ(tmp_path, capsys):
    """Upgrading rayalign adds options (at defaults that keep the old behaviour) and so changes every
    config hash. A finished stage whose record an earlier version wrote is still complete when its
    config, read with today's defaults, is today's and its hash is what that version computed from
    its own options and its upstream records: then nothing re-runs and the records take today's
    hashes. A record whose upstream stage ran again since, or whose config differs, re-runs."""
    p = write_pipeline(
        tmp_path,
        a_then_b(),
    )
    run = tmp_path / "run"
    assert main([str(p)]) == 0
    today = {s: read_record(str(run), s).config_hash for s in "ab"}  # type: ignore[union-attr]
    a_old = _as_an_earlier_version_wrote_it(run, "a", {}, "overlength")
    _as_an_earlier_version_wrote_it(run, "b", {"a": a_old}, "overlength")
    capsys.readouterr()
    assert main([str(p)]) == 0
    out = capsys.readouterr().out
    assert out.count("already complete (recorded by an earlier rayalign") == 2
    assert all(s["skipped"] for s in json.loads((run / "summary.json").read_text())["stages"])
    for s in "ab":
        rec = read_record(str(run), s)
        assert rec is not None and rec.config_hash == today[s] and rec.config["overlength"] == "quarantine"
    assert main([str(p)]) == 0 and capsys.readouterr().out.count("already complete (config") == 2

    # b's record computed from an upstream hash that a's record no longer holds: a ran again since
    _as_an_earlier_version_wrote_it(run, "a", {}, "overlength")
    _as_an_earlier_version_wrote_it(run, "b", {"a": "0123456789abcdef"}, "overlength")
    assert main([str(p)]) == 0
    out = capsys.readouterr().out
    assert "a (prepare): already complete (recorded by an earlier rayalign" in out
    assert "b (prepare): its config or an upstream stage changed" in out
    # an earlier version's record with a setting that differs from today's config: a re-runs, then b
    _as_an_earlier_version_wrote_it(run, "a", {}, "overlength")
    assert main([str(p), "stages.a.config.max_length=300"]) == 0
    assert [s["skipped"] for s in json.loads((run / "summary.json").read_text())["stages"]] == [False, False]
