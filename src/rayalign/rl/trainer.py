"""The GRPO trainer: the training engine's `Trainer` with a step that samples its own data.

One step (`GRPOTrainer.train_step`), on every rank:
  1. this rank's prompts for the step from `DataOrder` (a pure function of seed and step, so a
     resumed run continues at the right prompt with nothing else to restore),
  2. `group_size` responses per prompt from the rollout engines, sampled with a seed that is a pure
     function of (seed, step, prompt row) — a resumed run reproduces the same rollouts,
  3. rewards (`rl.rewards`) → group advantages (`objectives.policy`),
  4. the batch of prompt + response tokens (prompt masked out), old log-probs (only when
     ``inner_epochs`` > 1) and reference log-probs (only when ``kl_coef`` > 0) without grad,
  5. ``inner_epochs`` optimizer steps of the clipped loss through the Trainer's own step (loss
     units summed over ranks, one scheduler step per rollout batch),
  6. the new weights to the engines (`rl.rollout`).
Everything else — FSDP2, checkpoints and exact resume, metrics.jsonl, the summary — is the Trainer's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rayalign import storage
from rayalign.generate.engine import GenRequest, GenResult
from rayalign.generate.engine.protocol import TokenizingEngine, TokenLogprob
from rayalign.objectives.policy import group_advantages, rloo_advantages, token_logps_of
from rayalign.results import StageResult
from rayalign.rl.config import GRPOConfig
from rayalign.rl.env import Episode
from rayalign.rl.rewards import Rewards
from rayalign.rl.rollout import RolloutEngines, rollout_seed
from rayalign.train.config import TrainConfig
from rayalign.train.loop import Hooks
from rayalign.train.trainer import Trainer

STATS = (
    "responses",
    "reward_sum",
    "reward_sq",
    "passes",
    "response_tokens",
    "rollout_seconds",
    "groups",
    "staleness_sum",
    "dropped_groups",
)
ROLLOUTS_FILE = "rollouts.json"  # in a checkpoint: every rank's groups sampled but not yet trained on


class GRPOTrainer(Trainer):
    def __init__(self, cfg: TrainConfig, hooks: Hooks | None, grpo: GRPOConfig, actors: list[Any] | None = None):
        super().__init__(cfg, hooks)
        self.grpo = grpo
        self.k = grpo.asynchronous.max_staleness
        self.rewards = Rewards(grpo.rewards)
        engine_cfg = grpo.engine_config()
        self.render = TokenizingEngine(engine_cfg).render_ids  # the engines' own prompt rendering
        self.engines = RolloutEngines(
            engine_cfg,
            actors,
            keep=self.k + 1,
            background=self.k > 0,
            sync_timeout=grpo.asynchronous.sync_timeout,
            adapter=cfg.peft,
        )
        self.part_names = ["environment"] if grpo.environment is not None else [s.name for s in grpo.rewards]
        self.stats = torch.zeros(len(STATS) + len(self.part_names), dtype=torch.float64)
        self.staleness_max = 0.0
        # step -> rollouts on their way (Submitted) or done ((versions, results)), in step order
        self.queue: dict[int, Any] = self.restore_rollouts()
        self.engines.sync(self.model, self.rank, self.distributed, self.start)  # the initial or resumed policy

    def behaviour_version(self, step: int) -> int:
        """The policy version step `step`'s groups are sampled with: max_staleness versions behind,
        never older than the version this process started from."""
        return max(self.start, step - self.k)

    def requests(self, step: int) -> tuple[list[int], list[GenRequest]]:
        rows = [i for g in self.order.step_rows(step) for i in g]
        prompts = self.source.rows(rows)
        reqs = [
            GenRequest(
                messages=p["messages"],
                params=self.grpo.rollout.model_copy(
                    update={"n": self.grpo.group_size, "seed": rollout_seed(self.cfg.seed, step, row)}
                ),
                request_id=str(p.get("id", row)),
                logprobs=0,  # the sampled token ids come with their log-probs (the behaviour policy's)
            )
            for p, row in zip(prompts, rows, strict=True)
        ]
        return rows, reqs

    def submit(self, step: int, version: int) -> None:
        rows, reqs = self.requests(step)
        slots = [self.rank + self.world * j for j in range(len(rows))]
        env = self.grpo.environment
        prompts = self.source.rows(rows) if env is not None else None  # the environment resets from them
        self.queue[step] = self.engines.submit(reqs, slots, version, env, prompts)

    def fill_queue(self, step: int) -> None:
        """Rollouts of steps step … step + k on their way (each one's version is synced by now)."""
        for s in range(step, min(step + self.k, self.total_steps - 1) + 1):
            if s not in self.queue:
                self.submit(s, self.behaviour_version(s))

    def take(self, step: int) -> tuple[list[int], list[GenResult]]:
        """Step `step`'s groups: waited for, and sampled again (counted as dropped) when older than k."""
        item = self.queue.pop(step)
        versions, results = item if isinstance(item, tuple) else self.engines.collect(item)
        if max(step - v for v in versions) > self.k:  # from a checkpoint of a run with a larger k
            self.stats[STATS.index("dropped_groups")] += len(versions)
            self.submit(step, step)
            versions, results = self.engines.collect(self.queue.pop(step))
        return versions, results

    def train_step(self, step: int) -> None:
        t0 = time.perf_counter()
        self.fill_queue(step)
        versions, results = self.take(step)
        samples = self.score(step, versions, results)
        rollout_s = time.perf_counter() - t0  # sampling time the trainer waited for
        self.stats[STATS.index("rollout_seconds")] += rollout_s
        per = self.grpo.group_size * self.cfg.micro_batch_size
        pad = self.tokenizer.pad_token_id
        batches = [self.objective.collate(samples[i : i + per], pad) for i in range(0, len(samples), per)]
        self.precompute(batches)
        local_count = torch.stack([self.objective.count(b) for b in batches]).sum()
        local_count = local_count.to(device=self.device, dtype=torch.float32)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        for epoch in range(self.grpo.inner_epochs):
            self.window.tokens += tokens
            self.optimizer_step(batches, local_count, schedule=epoch == self.grpo.inner_epochs - 1)
        t1 = time.perf_counter()
        self.engines.sync(self.model, self.rank, self.distributed, step + 1)
        # training tokens/s counts training time only: not sampling, not the weight sync
        self.window.start += rollout_s + (time.perf_counter() - t1)

    def score(self, step: int, versions: list[int], results: list[Any]) -> list[dict]:
        """Score and weigh one step's groups: one training row per response, with the policy version
        it was sampled with and the engine's log-probs of its tokens (the behaviour policy)."""
        rows = [i for g in self.order.step_rows(step) for i in g]
        prompts = self.source.rows(rows)
        g = self.grpo.group_size
        if self.grpo.environment is not None:  # multi-turn episodes: the environment's rewards
            total = [ep.reward for eps in results for ep in eps]
            parts = {"environment": total}
            n_tokens = sum(sum(ep.mask) for eps in results for ep in eps)
        else:
            for p, res in zip(prompts, results, strict=True):
                if not res.ok or res.logprobs is None:
                    raise RuntimeError(f"rollout of prompt {p.get('id')!r} failed: {res.error}")
            texts = [t for res in results for t in res.texts]
            total, parts = self.rewards([p for p in prompts for _ in range(g)], texts)
            n_tokens = sum(sum(res.completion_tokens) for res in results)
        advantages = self.advantages(torch.tensor(total, dtype=torch.float64).view(len(prompts), g))
        self.count_rollouts(total, parts, n_tokens)
        staleness = [step - v for v in versions]
        self.stats[STATS.index("groups")] += len(staleness)
        self.stats[STATS.index("staleness_sum")] += sum(staleness)
        self.staleness_max = max([self.staleness_max, *staleness])
        out = []
        for j, (p, res) in enumerate(zip(prompts, results, strict=True)):
            prompt_ids = self.render(p["messages"])
            if self.grpo.environment is not None:
                for k, ep in enumerate(res):
                    out.append(
                        {
                            "prompt_ids": prompt_ids,
                            "response_ids": ep.response_ids,
                            "response_mask": ep.mask,
                            "behav_logps": ep.logps,
                            "advantage": float(advantages[j, k]),
                            "policy_version": versions[j],
                        }
                    )
                continue
            for k, lps in enumerate(res.logprobs or []):
                out.append(
                    {
                        "prompt_ids": prompt_ids,
                        "response_ids": [t.token_id for t in lps],
                        "behav_logps": [t.logprob for t in lps],
                        "advantage": float(advantages[j, k]),
                        "policy_version": versions[j],
                    }
                )
        return out

    def save_extra(self, folder: Path) -> None:
        """The groups sampled but not trained on yet (steps done … done + k − 1), every rank's, into
        the checkpoint: a resumed run trains on these very samples instead of sampling them again
        from a newer policy. Waits for the rollouts on their way."""
        mine = {}
        for s in sorted(self.queue):
            item = self.queue[s]
            self.queue[s] = item if isinstance(item, tuple) else self.engines.collect(item)
            versions, results = self.queue[s]
            mine[str(s)] = {"versions": versions, "results": [_dump(r) for r in results]}
        everyone: list[Any] = [None] * self.world
        if self.distributed:
            torch.distributed.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        if self.rank == 0:
            blob = {"step": self.last_step, "world": self.world, "ranks": everyone}
            (folder / ROLLOUTS_FILE).write_text(json.dumps(blob))

    def restore_rollouts(self) -> dict[int, Any]:
        """This rank's saved groups from the checkpoint the run resumed from (none on a fresh run)."""
        if not self.resumed_from:
            return {}
        path = storage.join(self.resumed_from, ROLLOUTS_FILE)
        if not storage.exists(path):
            return {}
        blob = json.loads(storage.read_text(path))
        if blob["world"] != self.world:  # another split of prompts over ranks: sample them again
            if self.rank == 0:
                print(f"[grpo] {path}: saved by {blob['world']} ranks, running on {self.world}: rollouts resampled")
            return {}
        out: dict[int, Any] = {}
        for s, item in blob["ranks"][self.rank].items():
            results = [_load(r) for r in item["results"]]
            out[int(s)] = (item["versions"], results)
        return out

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        kind, scale, _ = self.grpo.loss_parts()
        return rloo_advantages(rewards) if kind == "rloo" else group_advantages(rewards, scale)  # type: ignore[arg-type]

    def count_rollouts(self, total: list[float], parts: dict[str, list[float]], n_tokens: int) -> None:
        r = torch.tensor(total, dtype=torch.float64)
        passed = float((r >= self.grpo.pass_threshold).sum())
        head = [len(total), float(r.sum()), float((r * r).sum()), passed, float(n_tokens), 0.0]
        head += [0.0] * (len(STATS) - len(head))  # groups, staleness, drops: counted in `score` / `take`
        part_sums = [sum(parts[name]) for name in self.part_names]
        self.stats += torch.tensor(head + part_sums, dtype=torch.float64)

    def precompute(self, batches: list[dict]) -> None:
        """Old-policy (μ > 1) and reference (KL) log-probs, once per rollout batch, without grad."""
        old = self.grpo.inner_epochs > 1
        if not old and self.ref_model is None:
            return
        with torch.no_grad(), self.autocast:
            for b in batches:
                on_device = {k: v.to(self.device) for k, v in b.items()}
                if old:
                    b["old_logps"] = token_logps_of(self.model, on_device)[0].float()
                if self.ref_model is not None:
                    b["ref_logps"] = token_logps_of(self.ref_model, on_device)[0].float()

    def step_metrics(self) -> dict[str, float]:
        """Rollout metrics of the logged window, summed over ranks (every rank calls this)."""
        s = self.stats.to(self.device)
        if self.distributed:
            torch.distributed.all_reduce(s)
        v = dict(zip(STATS, s.tolist()[: len(STATS)]))
        n = max(v["responses"], 1.0)
        mean = v["reward_sum"] / n
        seconds = v["rollout_seconds"] / self.world  # ranks sample at the same time
        groups = max(v["groups"], 1.0)
        top = torch.tensor(self.staleness_max, device=self.device)
        if self.distributed:
            torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
        out = {
            "sync_bytes": float(self.engines.bytes_sent),
            "staleness_mean": v["staleness_sum"] / groups,
            "staleness_max": float(top),
            "dropped_groups": v["dropped_groups"],
            "reward_mean": mean,
            "reward_std": max(v["reward_sq"] / n - mean * mean, 0.0) ** 0.5,
            "pass_rate": v["passes"] / n,
            "response_length": v["response_tokens"] / n,
            "rollout_tokens_per_s": v["response_tokens"] / max(seconds, 1e-9),
        }
        for name, value in zip(self.part_names, s.tolist()[len(STATS) :]):
            out[f"reward/{name}"] = value / n
        self.stats.zero_()
        self.staleness_max = 0.0
        return out

    def train(self) -> StageResult:
        try:
            return super().train()
        finally:
            self.engines.close()
            self.rewards.close()  # a judge reward's engine


def _dump(result: GenResult | list[Episode]) -> Any:
    return [asdict(e) for e in result] if isinstance(result, list) else asdict(result)


def _load(data: Any) -> GenResult | list[Episode]:
    if isinstance(data, list):
        return [Episode(**e) for e in data]
    lps = data["logprobs"]
    if lps is not None:
        lps = [[TokenLogprob(**{**t, "top": [tuple(x) for x in t["top"]]}) for t in c] for c in lps]
    return GenResult(**{**data, "logprobs": lps})


def grpo_loop(
    config: dict | TrainConfig, hooks: Hooks | None = None, *, grpo: GRPOConfig, actors: list[Any] | None = None
) -> StageResult:
    """The training entry (`launch(..., entry=grpo_loop)`): in this process or on each Ray Train worker."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    return GRPOTrainer(cfg, hooks, grpo, actors).train()
