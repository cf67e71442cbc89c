"""`reuse_run` (rayjobs/quickstart.py): a recipe variant started from a copy of a finished run keeps
the stages its overrides leave unchanged, on a prepare-only pipeline in-process (no Ray)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from rayalign.pipeline import main, read_record

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "rayjobs"))
from quickstart import reuse_run  # noqa: E402  (rayjobs/ is not a package)

DATA = REPO / "rayjobs" / "data"
INLINE = {"workers": 0, "shard_rows": 64}


def pipeline(tmp_path: Path) -> Path:
    def prepare(name: str, kind: str, data: str) -> dict:
        config = {"kind": kind, "inputs": [str(DATA / data)], "max_length": 256, "pool": INLINE}
        return {"name": name, "stage": "prepare", "config": config}

    later = prepare("pairs", "pairs", "pairs.jsonl")
    later["config"]["max_length"] = "${stages.chat.max_length}"
    doc = {
        "run_dir": str(tmp_path / "unused"),
        "defaults": {"model": "tiny-random:llama"},
        "start_ray": False,
        "stages": [prepare("chat", "chat", "chat.jsonl"), later, prepare("more", "pairs", "pairs.jsonl")],
    }
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def skipped(run: Path) -> dict[str, bool]:
    return {s["name"]: s["skipped"] for s in json.loads((run / "summary.json").read_text())["stages"]}


def test_reuse_keeps_unchanged_stages_and_reruns_from_the_change(tmp_path):
    p = pipeline(tmp_path)
    src = tmp_path / "runs" / "base"
    assert main([str(p), f"run_dir={src}"]) == 0

    # a plain copy re-runs every stage: each config names its own output folder, which moved
    plain = tmp_path / "runs" / "plain"
    shutil.copytree(src, plain)
    assert main([str(p), f"run_dir={plain}"]) == 0
    assert skipped(plain) == {"chat": False, "pairs": False, "more": False}

    same = tmp_path / "runs" / "same"  # no override: every stage kept
    assert reuse_run(str(src), str(same), p, []) == ["chat", "pairs", "more"]
    assert read_record(str(same), "chat").config["output"] == f"{same}/chat"
    assert main([str(p), f"run_dir={same}"]) == 0
    assert skipped(same) == {"chat": True, "pairs": True, "more": True}

    # a variant of `pairs` keeps chat; pairs and every later stage run again (`more` too)
    variant = tmp_path / "runs" / "variant"
    assert reuse_run(str(src), str(variant), p, ["stages.pairs.config.max_length=64"]) == ["chat"]
    assert main([str(p), f"run_dir={variant}", "stages.pairs.config.max_length=64"]) == 0
    assert skipped(variant) == {"chat": True, "pairs": False, "more": False}
    assert read_record(str(variant), "pairs").config["max_length"] == 64
    assert read_record(str(src), "pairs").config["max_length"] == 256  # the source run is untouched
    # a variant of the first stage keeps nothing
    assert reuse_run(str(src), str(tmp_path / "runs" / "v2"), p, ["stages.chat.config.max_length=128"]) == []

    with pytest.raises(FileExistsError, match="exists"):
        reuse_run(str(src), str(variant), p, [])


def test_reuse_reads_records_of_an_earlier_version_with_todays_defaults(tmp_path):
    """A run recorded before an option existed (its records' configs lack it) is reused as far as
    today's config, the option at its default, matches: a variant that sets it re-runs from there."""
    from rayalign.pipeline import records

    p = pipeline(tmp_path)
    src = tmp_path / "runs" / "base"
    assert main([str(p), f"run_dir={src}"]) == 0
    for step in ("chat", "pairs", "more"):
        rec = read_record(str(src), step)
        assert rec is not None
        older = {k: v for k, v in rec.config.items() if k != "overlength"}
        records.write_record(str(src), step, rec.model_copy(update={"config": older}))
    assert reuse_run(str(src), str(tmp_path / "runs" / "same"), p, []) == ["chat", "pairs", "more"]
    assert reuse_run(str(src), str(tmp_path / "runs" / "v"), p, ["stages.pairs.config.overlength=truncate"]) == ["chat"]
