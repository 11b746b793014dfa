"""One training run, RL or SFT: its processes, policy, optimiser, schedule, RNG, logger and strategy, the steps
it runs, and how it ends: the export after the last step, or a checkpoint and a message on how to resume when it
stops early (a stop signal, repeated non-finite updates, a record that fails to load)."""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from framethink.config import TrainConfig
from framethink.data.records import Record
from framethink.engine import parameters
from framethink.engine.checkpoint import CHECKPOINT_PREFIX, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from framethink.engine.data_order import batch_indices
from framethink.engine.faults import StopSignals, check_media
from framethink.engine.logging import RunLogger, prepare_run_dir
from framethink.engine.processes import (
    any_process,
    gather_objects,
    is_main_process,
    mean_over_processes,
    process_count,
    process_rank,
    wait_for_everyone,
    writes_run_files,
)
from framethink.engine.strategies import DataParallel, check_engine_settings, select_strategy
from framethink.errors import ConfigError, DataError, TrainingStopped, VideoDecodeError


@dataclass
class TrainingRun:
    """Everything one RL or SFT run holds: processes, model, optimiser, schedule, RNG, logger, strategy."""

    config: TrainConfig
    accelerator: Accelerator
    out: Path
    adapter: Any
    params: list[torch.nn.Parameter]
    lora: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    start_step: int
    logger: RunLogger
    reference: Any = None  # frozen copy of the initial policy (RL with a KL term), or None
    strategy: DataParallel = field(default_factory=DataParallel)  # how the policy is spread over processes
    signals: StopSignals = field(default_factory=StopSignals, init=False)
    command: str = field(default="rl", init=False)  # the `framethink train` command running it (for the resume line)
    _prompts: list[str] = field(default_factory=list, init=False)  # the current step's records, for messages
    _step_rng: dict[str, Any] | None = field(default=None, init=False)  # the RNG state when the current step began
    _nonfinite: bool = field(default=False, init=False)  # a micro-batch of the current update had a non-finite loss
    _skipped: list[int] = field(default_factory=list, init=False)  # consecutive steps whose update was skipped
    _updated: bool = field(default=False, init=False)  # the current step has changed the weights

    @property
    def rank(self) -> int:
        return process_rank()

    @property
    def world(self) -> int:
        return process_count()

    @property
    def writer(self) -> bool:
        """Whether this process writes the run's checkpoints and export (once per run, or once per node)."""
        return writes_run_files(self.config.run.shared_filesystem)

    @contextlib.contextmanager
    def running(self, desc: str, quiet: bool) -> Iterator[Any]:
        """The remaining steps, with a progress bar and ETA on the main process. Inside it SIGTERM / SIGINT stop
        the run cleanly at the end of a step; leaving it, at the end or by any exception, puts the process's own
        signal handlers back and closes the logs (a caller in the same process, e.g. the demo, gets its Ctrl-C
        back whatever stopped the run)."""
        from tqdm.auto import tqdm

        self.command = desc
        self.signals.install()
        total = self.config.run.max_steps
        try:
            yield tqdm(range(self.start_step, total), initial=self.start_step, total=total, desc=desc,
                       disable=quiet or not is_main_process())
        finally:
            self.signals.restore()
            self.logger.close()

    def batch_indices(self, step: int, num_records: int) -> list[int]:
        c = self.config
        indices = batch_indices(step, c.optim.prompts_per_step, self.rank, self.world, num_records, c.run.seed,
                                c.data.shuffle)
        self._prompts = [f"record #{i}" for i in indices]
        return indices

    @contextlib.contextmanager
    def guard(self, step: int, batch: list[Record], records: list[Record] | None = None) -> Iterator[None]:
        """The part of step `step` on `batch` that loads records (`records`: all the step may draw from, e.g.
        refills). A record that fails to load there (its video does not decode) stops the run: the state before
        the step is written as a checkpoint where that is possible, and the error names the file, the record and
        the reason. Any other exception passes through."""
        self._prompts = [f"{r.id} ({r.origin})" for r in batch]
        self._step_rng = rng_state(self.generator)
        self._updated = False
        try:
            yield
        except (DataError, VideoDecodeError) as err:
            raise self._data_fault(step, [*batch, *(records or [])], err) from err

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, already weighted by its share of the step. The step has exactly
        `grad_accum` micro-batches (`micro_batches`), which is what DeepSpeed's accumulation counter expects."""
        self._nonfinite |= not bool(torch.isfinite(loss.detach()).all())
        self.strategy.backward(loss)

    def optimizer_step(self) -> float:
        """Average gradients over processes, clip, step; returns the gradient norm before clipping. An update
        whose loss or gradient is not finite on any process is skipped on every process and logged with the
        step's prompts; `run.max_nonfinite_steps` consecutive skips stop the run (in `end_step`)."""
        norm = self.strategy.reduce_gradients(self.params, self.config.optim.grad_clip)
        nonfinite = any_process(self._nonfinite or not math.isfinite(norm))
        self._nonfinite = False
        if not nonfinite:
            self.strategy.apply(self.adapter.model, self.optimizer)
            self._updated = True
            self._skipped.clear()
            return norm
        self.strategy.discard(self.optimizer)
        step = self.scheduler.last_epoch  # the loop steps the schedule once per training step
        if not self._skipped or self._skipped[-1] != step:
            self._skipped.append(step)
        prompts = [p for part in gather_objects(self._prompts) for p in part]
        self.logger.event(step + 1, "nonfinite_update_skipped", grad_norm=str(norm), prompts=prompts)
        if is_main_process():
            print(f"step {step + 1}: non-finite loss or gradient (gradient norm {norm}); update skipped. Prompts: "
                  f"{', '.join(prompts)}", file=sys.stderr, flush=True)
        return norm

    def advance_schedule(self) -> None:
        """Move the learning-rate schedule one training step, whether or not the step's update was skipped: the
        schedule counts steps, so a skipped update does not shift the rest of it. torch warns when a schedule moves
        before its optimiser ever stepped, which here is exactly a skipped first update, so that warning is expected
        and silenced."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before", category=UserWarning)
            self.scheduler.step()

    def end_step(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Average the step's metrics over processes, log them, write a checkpoint when due, and stop the run
        (checkpoint, then TrainingStopped) after `run.max_nonfinite_steps` consecutive skipped updates or on a
        stop signal. Returns every metric passed in: NaN where no process had a value."""
        run = self.config.run
        averaged = mean_over_processes(metrics, self.accelerator.device)
        if (step + 1) % run.log_every == 0:
            self.logger.log(step + 1, averaged)
        saved = None
        if run.save_every and (step + 1) % run.save_every == 0 and step + 1 < run.max_steps:
            saved = self.save(step + 1)
        if len(self._skipped) >= run.max_nonfinite_steps > 0:
            self._stop(step + 1, saved, f"{len(self._skipped)} consecutive updates had a non-finite loss or gradient "
                                        f"(steps {', '.join(str(s + 1) for s in self._skipped)}; see events.jsonl for "
                                        "their prompts); lower optim.lr or check the data and the model in that "
                                        "checkpoint")
        received = self.signals.received if self.signals.received is not None else 0
        if any_process(received != 0) and step + 1 < run.max_steps:
            name = signal.Signals(received).name if received else "a signal on another process"
            self._stop(step + 1, saved, f"stopped by {name} after step {step + 1} of {run.max_steps}")
        return {**{k: math.nan for k in metrics}, **averaged}

    def save(self, step: int, rng: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint of the state after `step` steps."""
        return save_checkpoint(self.out, step, self.adapter.model, self.params, self.optimizer, self.scheduler,
                               self.generator, {}, self.strategy, keep=self.config.run.keep_checkpoints,
                               shared_filesystem=self.config.run.shared_filesystem, rng=rng)

    def resume_command(self) -> str:
        return f"framethink train {self.command} --config {self.out / 'config.yaml'} --resume"

    def _stop(self, step: int, saved: Path | None, reason: str) -> None:
        """Write the checkpoint after `step` steps (unless just written), say how to resume, raise."""
        checkpoint = saved or self.save(step)
        self.logger.event(step, "stopped", reason=reason, checkpoint=str(checkpoint))
        raise TrainingStopped(f"{reason}. Checkpoint: {checkpoint}. Resume with: {self.resume_command()} "
                              "(under the same launcher, e.g. torchrun, for several processes)")

    def _data_fault(self, step: int, candidates: list[Record], err: DataError | VideoDecodeError) -> DataError:
        """The error for a record that failed during step `step`, after writing the checkpoint of the state
        before the step where every process can: a single process whose weights the step has not changed yet
        (several processes cannot write one together while the others wait inside the step)."""
        if isinstance(err, VideoDecodeError):
            path = Path(err.path)
            record = next((r for r in candidates if any(m == path or m in path.parents for m in r.media)), None)
            if record is None:  # media no record names (a frame cache, a derived file)
                raise err
            err = record.error(record.media_field, f"{err.path}: {err.reason}")
        if self.world == 1 and not self._updated:
            checkpoint = latest_checkpoint(self.out)
            if checkpoint is None or checkpoint.name != f"{CHECKPOINT_PREFIX}{step:06d}":
                checkpoint = self.save(step, rng=self._step_rng)
            resume = f"checkpoint {checkpoint} holds the run before step {step + 1}"
        else:
            checkpoint = latest_checkpoint(self.out)
            resume = f"the newest checkpoint is {checkpoint or 'none (run.save_every)'}"
        return DataError(err.file, err.where, err.field, f"{err.reason} (during step {step + 1}); the run stopped: "
                                                         f"{resume}; fix the record, then resume with: "
                                                         f"{self.resume_command()}")

    def finish(self) -> Path:
        """After `running`: export the final model in the Hugging Face layout (LoRA merged), with
        `framethink.json` recording the template, system message and frame rule it was trained with: once per
        run, or once per node where nodes do not share the run directory."""
        from framethink.model_card import write_model_card
        from framethink.models.registry import write_training_settings

        final = self.out / "final"
        with self.strategy.whole_policy(self.adapter, self.lora, self.config) as lora:
            self.adapter.model.eval()
            if lora is not None:
                self.adapter.model = lora.merge_and_unload()
            if self.writer:
                # transformers (5.2x) writes a model's weights only on the run's first process; where the nodes do
                # not share the run directory, the first process of every node exports too
                self.adapter.model.should_save_on_this_rank = lambda is_main_process: is_main_process
                self.adapter.save_pretrained(final)
                write_training_settings(final, template=self.config.data.template, system=self.config.data.system,
                                        frames=self.adapter.frames)
                write_model_card(final, self.config, self.out, processes=self.world)
        wait_for_everyone()
        return final

    def generation_context(self):
        """A context for the rollout (the strategy's: ZeRO-3 and FSDP keep the gathered weights through it)."""
        return self.strategy.generation_context(self.adapter.model)


def check_before_loading(config: TrainConfig, records: list[Record], accelerator: Accelerator) -> None:
    """What can be checked before any model loads: every record's media opens (unless `run.check_data` is off),
    and the configured backend can run the recipe on these records."""
    if config.run.check_data:
        check_media(records)
    check_engine_settings(config, records, accelerator)


def start_run(config: TrainConfig, accelerator: Accelerator, *, resume: bool, reference: bool = False,
              num_records: int | None = None) -> TrainingRun:
    """Load the model through its adapter, let the strategy prepare it (reference copy, freezing / LoRA /
    gradient checkpointing, sharding or wrapping, optimiser), build the schedule, and restore the newest complete
    checkpoint when resuming (the reference stays the initial policy). `num_records` (the training file's size)
    sets the schedule's horizon under `optim.schedule_epochs`."""
    strategy = select_strategy(accelerator)
    if config.optim.schedule_epochs is not None and num_records is None:
        raise ConfigError("optim.schedule_epochs: the schedule's horizon needs the number of training records")
    out = prepare_run_dir(config)
    adapter = parameters.build_adapter(config, str(accelerator.device))
    policy = strategy.prepare(adapter, config, reference=reference)
    scheduler = parameters.build_scheduler(policy.optimizer, config.optim,
                                           parameters.schedule_horizon(config, num_records or 0, process_count()))
    generator = torch.Generator().manual_seed(config.run.seed * 1000 + process_rank())
    start_step = 0
    if resume and (checkpoint := _agreed_checkpoint(out)) is not None:
        start_step = load_checkpoint(checkpoint, adapter.model, policy.optimizer, scheduler, generator, strategy)["step"]
    logger = RunLogger(out, config.run.report_to, enabled=is_main_process())
    return TrainingRun(config, accelerator, out, adapter, policy.params, policy.lora, policy.optimizer, scheduler,
                       generator, start_step, logger, policy.reference, strategy)


def _agreed_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint, the same step on every process (nodes that do not share the run
    directory each read their own copy)."""
    checkpoint = latest_checkpoint(out)
    names = gather_objects(checkpoint.name if checkpoint else None)
    if len(set(names)) > 1:
        raise ConfigError(f"--resume: the processes see different newest checkpoints ({', '.join(map(str, names))} "
                          f"by rank) under {out / 'checkpoints'}; remove the newer ones so all start from one step")
    return checkpoint
