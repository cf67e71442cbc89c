"""The trainer: setup in the constructor, one optimizer step in `train_step`, a short `train()`.

`Trainer(cfg, hooks).train()` runs as is in one process (tests, one GPU) and as the worker function
of a Ray Train `TorchTrainer` (see launcher.py, the only module that knows Ray). When
torch.distributed is initialised (Ray Train does it: gloo on CPU, NCCL on GPU) the model is sharded
with FSDP2.

One optimizer step:
  1. every rank collates its `grad_accum` micro-batches (rows chosen by data.DataOrder, read by
     data.RowSource: only the row groups this rank needs),
  2. the normalisation units (target tokens, pairs...) are summed over micro-batches AND ranks —
     one all-reduce of one integer,
  3. each micro-batch's loss SUM is scaled by world/global_count before backward: FSDP averages
     gradients over ranks (÷world), so the result is exactly Σ losses / global count — the same
     gradient as one process seeing the whole batch at once,
  4. clip, AdamW, warmup+cosine schedule.
Metrics stay on the device in a `Window` and are synchronised once per logged step (no `.item()`
per micro-batch).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rayalign import storage
from rayalign.results import StageResult
from rayalign.train import checkpoint as ckpt
from rayalign.train import fsdp
from rayalign.train.config import TrainConfig
from rayalign.train.loop import Hooks, LocalHooks, build_model, build_reference
from rayalign.train.metrics import run_local_dir


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to min_ratio at the last step."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class Window:
    """Sums of the steps since the last log line, kept on the device until `flush`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), device=self.device, dtype=torch.float32)
        self.loss, self.count, self.tokens = zero.clone(), zero.clone(), 0
        self.metrics: dict[str, torch.Tensor] = {}
        self.start = time.perf_counter()

    def add(self, loss_sum: torch.Tensor, metric_sums: dict[str, torch.Tensor]) -> None:
        self.loss += loss_sum.detach().float()
        for k, v in metric_sums.items():
            self.metrics[k] = self.metrics.get(k, torch.zeros_like(self.loss)) + v.detach().float()

    def flush(self, distributed: bool) -> tuple[float, float, float, dict[str, float], float]:
        """The one synchronisation per logged step: all-reduce the sums, then to Python."""
        keys = sorted(self.metrics)
        packed = torch.stack(
            [self.loss, self.count, torch.tensor(float(self.tokens), device=self.device)]
            + [self.metrics[k] for k in keys]
        )
        if distributed:
            torch.distributed.all_reduce(packed)
        vals = packed.tolist()
        seconds = time.perf_counter() - self.start
        n = max(vals[1], 1.0)
        return vals[0] / n, vals[1], vals[2], {k: v / n for k, v in zip(keys, vals[3:])}, seconds


class Trainer:
    """Builds everything a run needs from its config; `train()` runs the remaining steps."""

    def __init__(self, cfg: TrainConfig, hooks: Hooks | None = None):
        from rayalign.models.loader import load_tokenizer
        from rayalign.objectives import get_objective
        from rayalign.train.data import DataOrder, RowSource
        from rayalign.train.metrics import MetricsWriter, peak_flops

        self.cfg, self.hooks = cfg, hooks or LocalHooks()
        torch.set_num_threads(cfg.torch_threads)
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world = torch.distributed.get_world_size() if self.distributed else 1
        self.device = self.hooks.device()
        # bf16 mixed precision (fp32 master weights and optimizer): `auto` on GPU, or asked for (`bf16`) on
        # either device; CPUs with AMX / avx512_bf16 run it ~1.6× faster than fp32
        self.bf16 = cfg.dtype == "bf16" or (self.device.type == "cuda" and cfg.dtype != "fp32")
        self.out = cfg.output_dir

        self.objective = get_objective(cfg.objective.name, **cfg.objective.kwargs())
        self.tokenizer = load_tokenizer(cfg.model)
        self.source = RowSource(str(cfg.data.path))
        self.order = DataOrder(
            len(self.source), cfg.micro_batch_size, cfg.grad_accum, self.world, self.rank, cfg.seed, cfg.data.shuffle
        )
        self.total_steps = cfg.max_steps or self.order.steps_per_epoch * cfg.epochs

        resume = self.resumed_from = self.hooks.resume_from() or ckpt.latest_checkpoint(self.out)
        self.model = build_model(cfg, self.objective, self.device, self.world, self.bf16)
        self.n_params = sum(p.numel() for p in self.model.parameters())  # DTensors report their global size
        self.ref_model = None
        if self.objective.needs_reference and not any(c.startswith("ref_") for c in self.source.columns):
            self.ref_model = build_reference(cfg, self.objective, self.device, self.world, self.bf16)
        self.start = self._build_optimizer(resume)

        self.writer = MetricsWriter(self.out, self.rank == 0, self.start, self.total_steps, cfg)
        self.samples_log = self._samples_log() if cfg.log_samples else None
        self.peak = peak_flops(self.device, cfg.peak_tflops)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.bf16 and self.world == 1
            else torch.autocast(self.device.type, enabled=False)
        )
        self.window = Window(self.device)
        self.last_norm = torch.zeros((), device=self.device)
        self.last_record: dict[str, Any] = {}
        self.pending: ckpt.PendingSave | None = None
        self.async_group = None
        if cfg.checkpoint.async_save and self.distributed:
            # a separate gloo group: the background writer's collectives must not interleave with training's
            self.async_group = torch.distributed.new_group(backend="gloo")
        self.last_checkpoint: str | None = None
        self.lr = cfg.optim.lr
        self.last_step = self.start

    def _build_optimizer(self, resume: str | None) -> int:
        """AdamW + schedule; with a checkpoint, restore them and the weights. Returns the first step."""
        cfg = self.cfg
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # fused AdamW: one kernel over all parameters; on CPU it measured ~5× less time per step than the
        # default multi-tensor path for a 135M model, which matters more than the model.
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, fused=o.fused
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.warmup_steps, self.total_steps, o.min_lr_ratio)
        )
        if resume is None:
            return 0
        start = ckpt.load_training_state(
            resume,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            rank=self.rank,
            adapter=cfg.peft.method != "none",
            distributed=self.distributed,
        )
        if self.rank == 0:
            print(f"[train] resumed from {resume} at step {start}")
        return start

    def _samples_log(self) -> Path:
        """Per-rank audit log of consumed rows (local runs; tests compare it across resumes)."""
        path = run_local_dir(self.out) / "samples" / f"rank{self.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # drop lines a crashed attempt logged after the checkpoint
            lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= self.start]
            path.write_text("".join(x + "\n" for x in lines))
        return path

    def forward_backward_step(self, batch: dict, scale: torch.Tensor) -> None:
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with self.autocast:
            loss_sum, metric_sums = self.objective.loss(self.model, batch, self.ref_model)
        (loss_sum * scale).backward()
        self.window.add(loss_sum, metric_sums)

    def train_step(self, step: int) -> None:
        """One optimizer step over this rank's micro-batches (see the module docstring)."""
        index_groups = self.order.step_rows(step)
        rows = [self.source.rows(ix) for ix in index_groups]
        batches = [self.objective.collate(r, self.tokenizer.pad_token_id) for r in rows]
        local_count = torch.stack([self.objective.count(b) for b in batches]).sum()
        local_count = local_count.to(device=self.device, dtype=torch.float32)
        self.window.tokens += sum(int(r.get("num_tokens", len(r.get("input_ids", ())))) for rs in rows for r in rs)
        if self.samples_log is not None:
            with self.samples_log.open("a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "step": step + 1,
                            "rows": index_groups,
                            "docs": [r.get("doc_ids", r.get("id")) for rs in rows for r in rs],
                        }
                    )
                    + "\n"
                )
        self.optimizer_step(batches, local_count)

    def optimizer_step(self, batches: list[dict], local_count: torch.Tensor, schedule: bool = True) -> None:
        """Backward over this rank's collated micro-batches normalised by the global count, then clip
        and step; ``schedule=False`` leaves the LR schedule where it is (several updates on one batch)."""
        global_count = local_count.clone()
        if self.distributed:
            torch.distributed.all_reduce(global_count)
        scale = self.world / global_count.clamp(min=1.0)
        for batch in batches:
            self.forward_backward_step(batch, scale)
        self.window.count += local_count
        if self.cfg.optim.max_grad_norm > 0:
            self.last_norm = fsdp.grad_norm_value(
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.max_grad_norm)
            )
        self.lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        if schedule:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def log(self, done: int) -> None:
        loss, n, tokens, metrics, seconds = self.window.flush(self.distributed)
        tps = tokens / max(seconds, 1e-9)
        record = {
            "step": done,
            "epoch": self.order.epoch_of(done - 1),
            "loss": loss,
            "lr": self.lr,
            "grad_norm": float(self.last_norm),
            "tokens": int(tokens),
            "targets": int(n),
            "tokens_per_s": tps,
            "mfu": (6 * self.n_params * tps / (self.peak * self.world)) if self.peak else None,
            "cpu_time": time.process_time(),
        }  # this process's CPU seconds: wall time lies on a shared box
        record.update(metrics)
        record.update(self.step_metrics())
        self.writer.log(record)
        self.last_record = record
        self.window.reset()

    def step_metrics(self) -> dict[str, float]:
        """Further metrics of the logged window (subclasses: e.g. GRPO's rollout rewards); every rank calls it."""
        return {}

    def save(self, done: int) -> str:
        """Commit the previous (async) save, start this one; sync saves are committed at once."""
        self.flush_checkpoint()
        self.pending = ckpt.save_checkpoint(
            ckpt.step_dir(self.out, done),
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            step=done,
            tokenizer=self.tokenizer,
            peft_cfg=self.cfg.peft,
            rank=self.rank,
            distributed=self.distributed,
            async_group=self.async_group,
        )
        if self.pending is not None:
            self.save_extra(self.pending.local)
        if self.async_group is None:
            self.flush_checkpoint()
        return self.pending.path if self.pending else ckpt.step_dir(self.out, done)

    def save_extra(self, folder: Path) -> None:
        """Further state of a subclass into the checkpoint being written (every rank calls it; rank
        0's files are uploaded with the checkpoint): e.g. GRPO's rollouts not yet trained on."""

    def flush_checkpoint(self) -> None:
        if self.pending is None:
            return
        self.writer.sync()  # before the marker: a committed checkpoint's steps are always in metrics.jsonl
        path = ckpt.commit(self.pending, self.rank, self.distributed)
        self.last_checkpoint = path
        self.pending = None
        report_dir = None if storage.is_uri(path) else path  # Ray keeps its own copy of local checkpoints
        self.hooks.report({"step": self.last_step, **_scalars(self.last_record)}, report_dir)
        if self.rank == 0:
            ckpt.prune(self.out, self.cfg.checkpoint.keep_last, protect=path)

    def train(self) -> StageResult:
        """Run the remaining steps; return the run's result (see summary.py).

        A SIGTERM (a spot node's preemption notice, `kubectl delete`, a scheduler's stop) lets the
        step in flight finish, saves a checkpoint, then reaches whatever handled SIGTERM before
        (by default: the process ends), so a resumed run loses no finished step."""
        cfg = self.cfg
        self.model.train()
        self.last_step = self.start
        notice = Preemption(self.device)
        with notice:
            for step in range(self.start, self.total_steps):
                self.train_step(step)
                done = self.last_step = step + 1
                if done % cfg.log_every == 0 or done == self.total_steps:
                    self.log(done)
                stopping = cfg.stop_at_step is not None and done == cfg.stop_at_step
                preempted = notice.received(self.distributed)
                periodic = cfg.checkpoint.every > 0 and done % cfg.checkpoint.every == 0
                if done == self.total_steps or stopping or periodic or preempted:
                    self.save(done)
                    self.window.start = time.perf_counter()  # saving is not training time
                elif cfg.scaling.report_every > 0 and done % cfg.scaling.report_every == 0:
                    self.hooks.report({"step": done, **_scalars(self.last_record)}, None)
                if stopping or preempted:
                    break
            self.flush_checkpoint()
            self.writer.close()
        if notice.noted:
            if self.rank == 0:
                print(f"[train] SIGTERM: checkpoint saved at step {self.last_step}; stopping", flush=True)
            notice.deliver()
            raise RuntimeError(
                f"training stopped by SIGTERM after step {self.last_step} (checkpoint saved); run again to resume"
            )
        from rayalign.train.summary import finish

        return finish(self)


class Preemption:
    """Notes SIGTERM instead of dying at once (main thread only: a process started to train, not a
    Ray Train worker thread); `received` is true on every rank once any rank got it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.noted = False
        self.installed = False
        self.previous: Any = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._note)
            self.installed = True
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.noted = True

    def received(self, distributed: bool) -> bool:
        if not self.installed:
            return False
        if not distributed:
            return self.noted
        flag = torch.tensor([1.0 if self.noted else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.noted = bool(flag.item())
        return self.noted

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
            self.installed = False

    def deliver(self) -> None:
        """Hand the SIGTERM to the handler it would have reached (a default one ends the process)."""
        signal.raise_signal(signal.SIGTERM)


def _scalars(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None}


def train_loop(config: dict | TrainConfig, hooks: Hooks | None = None) -> StageResult:
    """The worker function: build a Trainer from the config and run it; every rank returns the run
    summary. It runs in this process (`scaling.workers: 0`) and on every Ray Train worker
    (launcher.py passes Ray's hooks)."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    return Trainer(cfg, hooks).train()
