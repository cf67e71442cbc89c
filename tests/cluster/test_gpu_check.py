"""benchmarks/gpu_check.py keeps working before a GPU is lent: its CPU dry run passes every section,
and the rayalign modules it uses import neither Ray nor vLLM (their wheels cannot travel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USED = [
    "rayalign.stages",
    "rayalign.train.launcher",
    "rayalign.train.stages",
    "rayalign.prefer.stages",
    "rayalign.prefer.reference",
    "rayalign.rl.grpo",
    "rayalign.rl.rollout",
    "rayalign.generate.engine",
    "rayalign.data.prepare",
    "rayalign.train.metrics",
    "rayalign.models.loader",
]


def fresh_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)


def test_the_modules_it_uses_import_neither_ray_nor_vllm(tmp_path):
    code = (
        "import importlib, sys\n"
        f"for m in {USED!r}: importlib.import_module(m)\n"
        "print(sorted({'ray', 'vllm'} & set(sys.modules)))\n"
    )
    run = fresh_python(code, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


@pytest.mark.timeout(240)
def test_dry_run_passes_every_section_and_writes_its_report(tmp_path):
    env = {**os.environ, "RAYALIGN_CACHE": os.environ.get("RAYALIGN_CACHE", str(Path.home() / ".cache/rayalign"))}
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--results", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    [report] = tmp_path.glob("*-gpu-check-cpu-dry-run.md")
    text = report.read_text()
    assert "FAILED" not in text
    for section in ("sft (packed chats)", "reference pass", "apo_zero, prefix tree", "apo_zero, plain packing",
                    "hf generation", "grpo step + weight sync"):  # fmt: skip
        assert f"| {section} | " in text, section
    assert "syncs 2" in text  # the initial weight sync and the one after the GRPO step
    # the standard results header (benchmarks/report.py), which the results index reads
    assert text.startswith("> command: `python benchmarks/gpu_check.py --dry-run")
    assert "> load average (1/5/15 min): " in text and "> versions: python " in text
