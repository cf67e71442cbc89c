"""Per-step metrics: JSONL in the run folder, a rich progress bar and (optionally) TensorBoard, rank 0 only.

MFU uses the usual 6·N FLOPs per trained token (forward 2N + backward 4N), N = model parameters,
against the per-device peak given in the config or looked up for known GPUs (bf16 dense).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    def __init__(self, output_dir: str | Path, enabled: bool, resume_step: int, total_steps: int,
                 progress: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.bar = self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed run rewrites the steps after its checkpoint: drop lines a crashed attempt logged.
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= resume_step:
                    kept.append(line)
        self.path.write_text("".join(x + "\n" for x in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except ImportError:
                print("[train] tensorboard is not installed; metrics go to metrics.jsonl only")
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("train", total=total_steps, completed=resume_step, info="")
            self.bar.start()

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])
        if self.bar is not None:
            self.bar.update(self.task, completed=record["step"],
                            info=f"loss {record['loss']:.4f}  {record['tokens_per_s']:.0f} tok/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.tb is not None:
            self.tb.close()


def read_metrics(output_dir: str | Path) -> list[dict]:
    p = Path(output_dir) / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []
