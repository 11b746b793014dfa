"""Checkpoints: `checkpoints/step-NNNNNN` written atomically, with exact resume.

Everything goes to a temporary directory that is renamed only when complete, so a crash or a failed write
(disk full, no permission) never leaves a checkpoint that resume would pick: the previous one stays the newest.
The strategy writes the weights and optimiser state (whole, or each process's shards); the directory also holds
the schedule, every process's RNG state and the trainer's step. `run.keep_checkpoints=N` keeps the newest N.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framethink.engine.processes import any_process, process_rank, writes_run_files
from framethink.engine.strategies import DataParallel
from framethink.errors import CheckpointWriteError

CHECKPOINT_PREFIX = "step-"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest COMPLETE checkpoint: only fully written directories carry the `step-` name."""
    done = sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
    return done[-1] if done else None


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a step draws from: Python's, NumPy's, torch's and the run's sampling generator."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": generator.get_state()}


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])


def save_checkpoint(
    out: Path, step: int, model: torch.nn.Module, trainable: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator, state: dict[str, Any],
    strategy: DataParallel | None = None, *, keep: int = 0, shared_filesystem: bool = True,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write `checkpoints/step-NNNNNN` atomically (every process calls it) and return its path.

    `rng` is the RNG state to record (default: the current one); `keep` > 0 removes all but the newest `keep`
    checkpoints once this one is complete. Where the run directory is not shared between nodes
    (`shared_filesystem` false) the first process of every node writes the shared files to its own disk.
    A write that fails on any process removes the temporary directory on every node and raises CheckpointWriteError
    naming the path and the bytes the checkpoint needs; the previous checkpoint is untouched."""
    strategy = strategy or DataParallel()
    root = out / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = root / f".tmp-{step:06d}"
    writer = writes_run_files(shared_filesystem)

    def create() -> None:
        if writer:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

    def write() -> None:
        torch.save(rng if rng is not None else rng_state(generator), tmp / f"rng-rank{process_rank()}.pt")
        strategy.save(tmp, model, trainable, optimizer, writer)
        if writer:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))

    def publish() -> None:
        if writer:
            os.replace(tmp, final)

    previous = latest_checkpoint(out)
    for phase in (create, write, publish):
        _everywhere(phase, lambda err: _failed(err, final, tmp, writer, strategy.checkpoint_bytes(trainable, optimizer),
                                               previous))
    if writer and keep > 0:
        for old in sorted(root.glob(f"{CHECKPOINT_PREFIX}*"))[:-keep]:
            shutil.rmtree(old)
    return final


def _everywhere(phase: Callable[[], None], on_failure: Callable[[OSError | None], None]) -> None:
    """Run `phase` on this process; if it failed on any process, call `on_failure` everywhere (with this
    process's error, or None where it succeeded). The agreement is also the barrier between phases."""
    error = None
    try:
        phase()
    except OSError as err:
        error = err
    if any_process(error is not None):
        on_failure(error)


def _failed(error: OSError | None, final: Path, tmp: Path, writer: bool, needed: int, previous: Path | None) -> None:
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)  # free what the failed write took
    free = shutil.disk_usage(final.parent if final.parent.exists() else final.parent.parent).free
    reason = f"{error.strerror or error} ({error.filename or tmp})" if error is not None else "another process failed"
    raise CheckpointWriteError(final, reason, needed, free, previous) from error


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    generator: torch.Generator, strategy: DataParallel | None = None,
) -> dict[str, Any]:
    """Restore weights, optimiser, schedule and every RNG; return the saved trainer state."""
    (strategy or DataParallel()).load(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    restore_rng(torch.load(path / f"rng-rank{process_rank()}.pt", map_location="cpu", weights_only=False), generator)
    return json.loads((path / "state.json").read_text())
