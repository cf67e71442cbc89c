"""Experiment trackers: `report_to: [tensorboard, wandb, mlflow]` on training and eval configs.

Each tracker gets the run name, the config (secrets redacted) and every logged step's numeric
metrics, from rank 0 only. The libraries are optional (the `tracking` extra); a tracker whose
library is missing fails at start with the install command, not silently. They honour their own
environment: `WANDB_MODE=offline` / `WANDB_DIR`, `MLFLOW_TRACKING_URI` (default: a SQLite
store `mlflow.db` in the run's local folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from rayalign.config import ConfigError

SECRET = re.compile(r"(token|secret|password|api[_-]?key|credential)", re.IGNORECASE)


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifacts(self, folder: Path) -> None: ...  # a report folder: tables, plots

    def close(self) -> None: ...


def redact(value: Any) -> Any:
    """The config with every secret-looking key's value replaced (trackers upload what they get)."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if SECRET.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def _require(module: str, name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"report_to: {name} needs the {name} package; "
            f"pip install 'rayalign[tracking]' (or remove {name} from report_to)"
        ) from None


class TensorBoardTracker:
    def __init__(self, log_dir: Path, name: str, config: dict):
        tb = _require("torch.utils.tensorboard", "tensorboard")
        self.writer = tb.SummaryWriter(str(log_dir))
        self.writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in flat(config).items()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():  # eval metrics carry their own section (`aligned/...`)
            self.writer.add_scalar(k if "/" in k else f"train/{k}", v, step)

    def log_artifacts(self, folder: Path) -> None:
        # TensorBoard has no files: the report's markdown tables as text, its plots as images
        for f in sorted(folder.rglob("*.md")):
            self.writer.add_text(f"report/{f.name}", f.read_text())
        for f in sorted(folder.rglob("*.png")):
            import numpy as np
            from matplotlib import image

            self.writer.add_image(f"report/{f.stem}", np.asarray(image.imread(f))[..., :3], dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import os

        wandb = _require("wandb", "wandb")
        # the user's WANDB_DIR wins; passed per run because wandb keeps the settings of the first
        # init in a process-wide singleton (a second run would land in the first one's folder)
        folder = os.environ.get("WANDB_DIR") or str(run_dir)
        self.run = wandb.init(project="rayalign", name=name, config=config, dir=folder, reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_artifacts(self, folder: Path) -> None:
        import wandb

        artifact = wandb.Artifact(f"{self.run.name or 'run'}-report", type="report")
        artifact.add_dir(str(folder))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, run_dir: Path, name: str, config: dict):
        import os

        mlflow = _require("mlflow", "mlflow")
        # default: a local SQLite store in the run folder (MLflow's file store is deprecated)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
        self.client = mlflow.MlflowClient(uri)
        experiment = self.client.get_experiment_by_name("rayalign")
        # a local SQLite store keeps its artifacts beside it (MLflow's default is ./mlruns in the
        # current directory, which would litter wherever the job was started)
        local = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
        artifacts = (Path(local).parent / "mlartifacts").as_uri() if local else None
        exp_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment("rayalign", artifact_location=artifacts)
        )
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        for k, v in flat(config).items():
            self.client.log_param(self.run_id, k[:250], str(v)[:6000])

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, v, step=step)

    def log_artifacts(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path="report")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS: dict[str, Callable[[Path, str, dict], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}


def open_trackers(names: Sequence[str], run_dir: Path, run_name: str, config: dict) -> list[Tracker]:
    """Start one tracker per name (rank 0 only); `run_dir` is the run's local folder."""
    clean = redact(config)
    return [TRACKERS[n](run_dir / n if n == "tensorboard" else run_dir, run_name, clean) for n in dict.fromkeys(names)]
