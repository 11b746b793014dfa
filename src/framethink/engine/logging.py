"""What a run writes for people to read: the run directory with its config, metrics (JSONL, TensorBoard,
wandb), rollout samples and events (skipped updates, stops)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framethink.config import TrainConfig, save_config
from framethink.engine.processes import wait_for_everyone, writes_run_files
from framethink.errors import ConfigError


@dataclass
class RunLogger:
    """JSONL metrics, TensorBoard scalars (wandb too when asked for and installed), rollout samples, events."""

    out: Path
    report_to: list[str]
    enabled: bool = True
    _writers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for backend in self.report_to:
            if backend == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self._writers.append(("tensorboard", SummaryWriter(str(self.out / "tensorboard"))))
            elif backend == "wandb":
                import wandb  # optional; ImportError tells the user to install it

                self._writers.append(("wandb", wandb.init(project="framethink", dir=str(self.out))))
            elif backend != "none":
                raise ConfigError(f"run.report_to: unknown backend {backend!r} (tensorboard, wandb, none)")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        for kind, writer in self._writers:
            if kind == "tensorboard":
                for key, value in metrics.items():
                    writer.add_scalar(key, value, step)
            else:
                writer.log(metrics, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        if not self.enabled:
            return
        with open(self.out / "samples.jsonl", "a") as f:
            f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)

    def event(self, step: int, name: str, **fields: Any) -> None:
        """One line in events.jsonl: something that happened to the run rather than a measurement."""
        if not self.enabled:
            return
        with open(self.out / "events.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), "event": name, **fields}) + "\n")

    def close(self) -> None:
        for kind, writer in self._writers:
            writer.close() if kind == "tensorboard" else writer.finish()


def prepare_run_dir(config: TrainConfig) -> Path:
    """The run directory, with the run's config.yaml (what `--resume` and a re-run read)."""
    out = Path(config.run.out)
    if writes_run_files(config.run.shared_filesystem):
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    wait_for_everyone()
    return out
