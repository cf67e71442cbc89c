"""Per-step metrics: JSONL in the run folder, progress and the trackers of `report_to`, rank 0 only.

Progress: a rich bar (step/total, ETA, loss, tokens/s) on a terminal; on a pipe a plain line every
30 s and at the last step. Each JSONL row carries `total_steps`, which `rayalign status` and the
pipeline display read.

MFU uses the usual 6·N FLOPs per trained token (forward 2N + backward 4N), N = model parameters,
against the per-device peak given in the config or looked up for known GPUs (bf16 dense).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rayalign import storage

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_flops(device, configured: float | None) -> float | None:
    if configured:
        return configured * 1e12
    if device.type != "cuda":
        return None  # CPU peaks vary too much to guess; give peak_tflops to get an MFU
    import torch

    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


class MetricsWriter:
    """Rank 0 appends one JSON line per logged step to a local file and feeds the trackers.

    A run folder on object storage gets the file uploaded at every `sync()` (checkpoints, the end):
    object stores cannot append, and a resumed run must see the steps logged before its checkpoint.
    """

    def __init__(self, output_dir: str, enabled: bool, resume_step: int, total_steps: int, cfg):
        from rayalign.train.tracking import open_trackers

        self.enabled = enabled
        self.total_steps = total_steps
        self.plain: PlainProgress | None = None
        self.target = storage.join(output_dir, "metrics.jsonl")
        self.local_dir = run_local_dir(output_dir)
        self.path = self.local_dir / "metrics.jsonl"
        self.bar = None
        self.trackers: list = []
        if not enabled:
            return
        self.local_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run rewrites the steps after its checkpoint: drop lines a crashed attempt logged.
        previous = storage.read_text(self.target) if storage.exists(self.target) else ""
        kept = [x for x in previous.splitlines() if x.strip() and json.loads(x).get("step", 0) <= resume_step]
        self.path.write_text("".join(x + "\n" for x in kept))
        names = list(cfg.report_to) + (["tensorboard"] if cfg.tensorboard else [])
        self.trackers = open_trackers(names, self.local_dir, cfg.name, cfg.model_dump(mode="json"))
        if cfg.progress and not _is_terminal():
            self.plain = PlainProgress(total_steps)
        elif cfg.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=resume_step, info="")
            self.bar.start()

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), "total_steps": self.total_steps, **record}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        numbers = {
            k: float(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time", "total_steps")
        }
        for t in self.trackers:
            t.log(numbers, record["step"])
        if self.plain is not None:
            self.plain.update(record)
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=record["step"],
                info=f"loss {record['loss']:.4f}  {record['tokens_per_s']:.0f} tok/s",
            )

    def sync(self) -> None:
        if self.enabled and storage.is_uri(self.target):
            storage.write_bytes(self.target, self.path.read_bytes())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        for t in self.trackers:
            t.close()
        self.sync()


PLAIN_EVERY_S = 30.0


def _is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class PlainProgress:
    """Training progress on a pipe (CI, `ray job logs`): a line every PLAIN_EVERY_S seconds and at
    the last step, e.g. `train: 20/60 steps, loss 1.8, 512 tok/s, 2.0 steps/s, ETA 20s`."""

    def __init__(self, total: int, every_s: float = PLAIN_EVERY_S, out=None):
        self.total, self.every_s, self.out = total, every_s, out
        self.first: tuple[int, float] | None = None  # (step, time) of this run's first logged step
        self.last_print = time.time()

    def update(self, record: dict) -> None:
        from rayalign.textfmt import Progress

        step, now = int(record["step"]), float(record.get("time") or time.time())
        if self.first is None:
            self.first = (step, now)
        rate = (step - self.first[0]) / (now - self.first[1]) if now > self.first[1] else None
        if now - self.last_print < self.every_s and step < self.total:
            return
        self.last_print = now
        eta = max(self.total - step, 0) / rate if rate else None
        p = Progress(
            "steps",
            step,
            self.total,
            rate=rate,
            loss=record.get("loss"),
            tokens_per_s=record.get("tokens_per_s"),
            eta_s=eta,
        )
        print(f"train: {p.line()}", file=self.out or sys.stdout, flush=True)


def run_local_dir(output_dir: str) -> Path:
    """The run folder itself when local; a node-local mirror for a run folder on object storage."""
    if not storage.is_uri(output_dir):
        return Path(output_dir)
    import hashlib

    return storage.cache_root() / "runs" / hashlib.sha256(output_dir.encode()).hexdigest()[:16]


def read_metrics(output_dir: str | Path) -> list[dict]:
    p = storage.join(str(output_dir), "metrics.jsonl")
    return [json.loads(x) for x in storage.read_text(p).splitlines() if x.strip()] if storage.exists(p) else []
