"""Where the eval stage's answering time goes: the stage's own path against a direct engine call,
with one and two torch threads, on the same prompts.

    python benchmarks/bench_eval.py                  # 8 dev prompts, 1 and 2 threads, ~5-15 min
    python benchmarks/bench_eval.py --prompts 16 --reps 2

The quickstart's eval stage answers 120 prompts (60 per model). Each measurement answers the first
`--prompts` prompts of the dev split (`rayjobs/data/dev_suite.jsonl`) with the quickstart's own
settings (HF engine, bf16, batch 16, greedy, 96 tokens, `rayjobs/configs/quickstart.yaml`), in two ways:

- stage: `eval.stage.on_device(cfg, generate, ...)`, exactly what the stage runs per model (engine
  built from the model folder, requests chunked at the engine's capacity with progress reports,
  engine closed), with `torch_threads` = 1 or 2;
- direct: one `engine.generate(requests)` on an engine loaded beforehand, under the same threads.

stage ≈ direct at equal threads says the stage adds nothing per answer (no engine or tokenizer
rebuilt per answer, the batches are the engine's own); the thread rows show what a thread without a
free core costs. Runs alternate (2 threads then 1, then the reverse order on the next rep) and each
row records the 1-minute load average at its start. Writes benchmarks/results/<date>-eval-cpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml
from report import save_report  # benchmarks/report.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "rayjobs" / "data" / "dev_suite.jsonl"
CONFIG = REPO / "rayjobs" / "configs" / "quickstart.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct", help="the model that answers")
    p.add_argument("--prompts", type=int, default=8, help="first N dev prompts")
    p.add_argument("--reps", type=int, default=1, help="repetitions of each row (order reversed each rep)")
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch thread counts to compare")
    a = p.parse_args()

    import torch

    from rayalign.eval.stage import EvalConfig, generate, on_device
    from rayalign.generate.engine import GenRequest, make_engine

    spec = yaml.safe_load(CONFIG.read_text())
    stage_cfg = next(s for s in spec["stages"] if s["name"] == "eval")["config"]
    prompts = [json.loads(line)["prompt"] for line in DEV.read_text().splitlines() if line.strip()][: a.prompts]

    def cfg(threads: int) -> EvalConfig:
        return EvalConfig(
            model=a.model,
            output="unused",
            engine=stage_cfg["engine"],
            params=stage_cfg["params"],
            torch_threads=threads,
        )

    base = cfg(1)
    engine = make_engine(base.engine.model_copy(update={"model": a.model}))
    requests = [GenRequest(messages=[{"role": "user", "content": q}], params=base.params) for q in prompts]

    def direct() -> list[str]:
        return [r.texts[0] if r.ok and r.texts else "" for r in engine.generate(requests)]

    rows, answers = [], {}
    for rep in range(a.reps):
        order = a.threads if rep % 2 == 0 else list(reversed(a.threads))
        for threads in order:
            for mode in ("stage", "direct"):
                load = os.getloadavg()[0]
                t0 = time.time()
                if mode == "stage":
                    out, _ = on_device(cfg(threads), generate, cfg(threads), a.model, prompts)
                else:
                    kept = torch.get_num_threads()
                    torch.set_num_threads(threads)
                    out = direct()
                    torch.set_num_threads(kept)
                sec = time.time() - t0
                answers[(mode, threads)] = out
                rows.append((mode, threads, rep, sec, load))
                print(
                    f"{mode} threads={threads} rep={rep}: {sec:.1f} s ({sec / len(prompts):.2f} s/answer), load {load:.1f}"
                )
    engine.close()

    first = next(iter(answers))
    agree = {key: sum(x == y for x, y in zip(v, answers[first])) for key, v in answers.items()}
    lines = [
        f"# Eval-stage answering — {time.strftime('%Y-%m-%d')}",
        "",
        f"{len(prompts)} dev prompts answered by `{a.model}` with the quickstart eval stage's engine "
        f"`{json.dumps(stage_cfg['engine'])}` and params `{json.dumps(stage_cfg['params'])}`; "
        "stage = `on_device(cfg, generate, ...)` (engine load included), direct = `engine.generate` on a "
        "loaded engine.",
        "",
        "| path | torch threads | rep | seconds | s / answer | load (1 min) at start |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {m} | {t} | {r} | {s:.1f} | {s / len(prompts):.2f} | {ld:.1f} |" for m, t, r, s, ld in rows),
        "",
        f"Answers equal to the first row's ({first[0]}, {first[1]} thread(s)), of {len(prompts)}: "
        + ", ".join(f"{m} {t} thread(s) {n}" for (m, t), n in agree.items())
        + ".",
        "",
    ]
    for threads in a.threads:
        for mode in ("stage", "direct"):
            best = min(s for m, t, _, s, _ in rows if m == mode and t == threads)
            lines.append(f"- {mode}, {threads} thread(s): best {best:.1f} s ({best / len(prompts):.2f} s/answer)")
    save_report(lines, "eval")


if __name__ == "__main__":
    main()
