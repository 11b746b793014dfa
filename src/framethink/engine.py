"""The training engine shared by RL and SFT: processes, trainable parameters, optimiser and schedule,
gradient averaging, atomic checkpoints with exact resume, and logging.

Data parallelism: each process runs its own prompts; after backward the gradients of every trainable
parameter are averaged over processes (one flat all-reduce), then every process takes the same step,
so all ranks hold identical weights. This is DDP's arithmetic without DDP's wrapper, which would not see
the vision features computed outside the wrapped forward. Processes come from `torchrun` (gloo on CPU,
nccl on GPU); accelerate provides the device, the process group and mixed precision.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator

from framethink.config import ModelConfig, OptimConfig, TrainConfig, save_config
from framethink.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_accelerator(config: TrainConfig) -> Accelerator:
    """One process per `torchrun` worker; bf16 autocast only where a GPU runs it."""
    cpu = not torch.cuda.is_available()
    precision = "bf16" if config.model.dtype == "bfloat16" and not cpu else "no"
    return Accelerator(cpu=cpu, mixed_precision=precision)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_trainable(groups: dict[str, list[torch.nn.Parameter]], config: ModelConfig) -> list[torch.nn.Parameter]:
    """Apply the freeze switches to the adapter's parameter groups; return the trainable parameters."""
    frozen = {"vision": config.freeze_vision, "connector": config.freeze_connector, "lm": config.freeze_lm}
    trainable = []
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(not frozen[name])
            if not frozen[name]:
                trainable.append(p)
    if not trainable:
        raise ConfigError("model: every part is frozen (freeze_vision, freeze_connector, freeze_lm); nothing to train")
    return trainable


def apply_lora(model: torch.nn.Module, config: ModelConfig):
    """Inject LoRA adapters (peft) into `model` in place; only they train. Returns the peft `LoraModel`,
    whose `merge_and_unload()` gives back the plain model with merged weights for export."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    lora = config.lora
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
    return LoraModel(model, peft_config, "default")


def build_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms are not decayed
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas),
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero (or constant)."""
    warmup = optim.warmup_steps or math.ceil(optim.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every trainable gradient over all processes (a missing gradient counts as zero)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def mean_over_processes(metrics: dict[str, float], accelerator: Accelerator) -> dict[str, float]:
    """Each metric averaged over processes in ONE collective; NaN entries (e.g. the temporal statistics of a
    process whose batch holds no video) are left out of the mean, and a metric NaN everywhere is dropped.
    Every process must report the same keys."""
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=accelerator.device)  # [K]
    values = accelerator.gather(values).view(-1, len(keys)).cpu()  # [world, K]
    means = values.nanmean(0).tolist()
    return {k: v for k, v in zip(keys, means) if not math.isnan(v)}


# ---------------------------------------------------------------------------- checkpoints
CHECKPOINT_PREFIX = "step-"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest COMPLETE checkpoint: only fully written directories carry the `step-` name."""
    done = sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
    return done[-1] if done else None


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": generator.get_state()}


def save_checkpoint(
    out: Path, step: int, model: torch.nn.Module, trainable: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator, accelerator: Accelerator,
    state: dict[str, Any],
) -> Path:
    """Write `checkpoints/step-NNNNNN` atomically: everything goes to a temporary directory that is renamed
    only when complete, so a crash never leaves a checkpoint that resume would pick."""
    root = out / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = root / f".tmp-{step:06d}"
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(generator), tmp / f"rng-rank{rank}.pt")
    if accelerator.is_main_process:
        names = {id(p): n for n, p in model.named_parameters()}
        torch.save({names[id(p)]: p.detach().cpu() for p in trainable}, tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    generator: torch.Generator, accelerator: Accelerator,
) -> dict[str, Any]:
    """Restore weights, optimiser, schedule and every RNG; return the saved trainer state."""
    weights = torch.load(path / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    rng = torch.load(path / f"rng-rank{accelerator.process_index}.pt", map_location="cpu", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    return json.loads((path / "state.json").read_text())


# ---------------------------------------------------------------------------- data order
def epoch_order(num_records: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The record order of one epoch, identical on every process and after a resume."""
    if not shuffle:
        return list(range(num_records))
    return torch.randperm(num_records, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def batch_indices(step: int, per_process: int, rank: int, world: int, num_records: int, seed: int, shuffle: bool) -> list[int]:
    """Record indices of `step` for process `rank`: a pure function of the step, so resume needs only the step."""
    per_step = per_process * world
    start = step * per_step + rank * per_process
    out = []
    for position in range(start, start + per_process):
        epoch, offset = divmod(position, num_records)
        out.append(epoch_order(num_records, epoch, seed, shuffle)[offset])
    return out


# ---------------------------------------------------------------------------- logging
@dataclass
class RunLogger:
    """JSONL metrics, TensorBoard scalars (wandb too when asked for and installed), rollout samples."""

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
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def close(self) -> None:
        for kind, writer in self._writers:
            writer.close() if kind == "tensorboard" else writer.finish()


def prepare_run_dir(config: TrainConfig, accelerator: Accelerator) -> Path:
    out = Path(config.run.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    accelerator.wait_for_everyone()
    return out


# ---------------------------------------------------------------------------- one training run
def build_adapter(config: TrainConfig, device: str):
    """The policy adapter with the recipe's frame rule, pixel bounds, template and system message."""
    from framethink.data.clips import FrameRule
    from framethink.models.registry import load_adapter

    data = config.data
    frames = FrameRule(rule=data.frame_rule, fps=data.fps, min_frames=data.min_frames, max_frames=data.max_frames,
                       num_frames=data.num_frames)
    return load_adapter(
        config.model.path, frames=frames, max_pixels=data.video_max_pixels, video_min_pixels=data.video_min_pixels,
        image_max_pixels=data.image_max_pixels, image_min_pixels=data.image_min_pixels, template=data.template,
        system=data.system, dtype=DTYPES[config.model.dtype], device=device, frame_cache_size=data.frame_cache_size,
    )


def trainable_parameters(adapter, config: TrainConfig) -> tuple[list[torch.nn.Parameter], Any]:
    """Freeze switches, or LoRA adapters when enabled; returns (parameters, peft LoRA model or None)."""
    if config.model.lora.enabled:
        lora = apply_lora(adapter.model, config.model)
        return [p for p in adapter.model.parameters() if p.requires_grad], lora
    return set_trainable(adapter.parameter_groups(), config.model), None


@dataclass
class TrainingRun:
    """Everything one RL or SFT run holds: processes, model, optimiser, schedule, RNG, logger."""

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

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def steps(self, desc: str, quiet: bool):
        """The remaining steps, with a progress bar and ETA on the main process."""
        from tqdm.auto import tqdm

        total = self.config.run.max_steps
        return tqdm(range(self.start_step, total), initial=self.start_step, total=total, desc=desc,
                    disable=quiet or not self.accelerator.is_main_process)

    def batch_indices(self, step: int, num_records: int) -> list[int]:
        c = self.config
        return batch_indices(step, c.optim.prompts_per_step, self.rank, self.world, num_records, c.run.seed, c.data.shuffle)

    def optimizer_step(self) -> float:
        """Average gradients over processes, clip, step; returns the gradient norm before clipping."""
        average_gradients(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def end_step(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Average the step's metrics over processes, log them, write a checkpoint when due."""
        run = self.config.run
        metrics = mean_over_processes(metrics, self.accelerator)
        if (step + 1) % run.log_every == 0:
            self.logger.log(step + 1, metrics)
        if run.save_every and (step + 1) % run.save_every == 0 and step + 1 < run.max_steps:
            save_checkpoint(self.out, step + 1, self.adapter.model, self.params, self.optimizer, self.scheduler,
                            self.generator, self.accelerator, {})
        return metrics

    def finish(self) -> Path:
        """Close the logs and export the final model in the Hugging Face layout (LoRA merged), with
        `framethink.json` recording the template, system message and frame rule it was trained with."""
        from framethink.models.registry import write_training_settings

        self.logger.close()
        self.adapter.model.eval()
        if self.lora is not None:
            self.adapter.model = self.lora.merge_and_unload()
        final = self.out / "final"
        if self.accelerator.is_main_process:
            self.adapter.save_pretrained(final)
            write_training_settings(final, template=self.config.data.template, system=self.config.data.system,
                                    frames=self.adapter.frames)
        self.accelerator.wait_for_everyone()
        return final


def start_run(config: TrainConfig, accelerator: Accelerator, *, resume: bool, reference: bool = False) -> TrainingRun:
    """Load the model through its adapter, keep a frozen copy of it as the reference model when asked, apply
    freezing / LoRA / gradient checkpointing, build the optimiser and schedule, and restore the newest complete
    checkpoint when resuming (the reference stays the initial policy)."""
    out = prepare_run_dir(config, accelerator)
    adapter = build_adapter(config, str(accelerator.device))
    reference_model = copy.deepcopy(adapter.model).eval().requires_grad_(False) if reference else None
    if config.model.gradient_checkpointing:
        adapter.model.gradient_checkpointing_enable()
    params, lora = trainable_parameters(adapter, config)
    optimizer = build_optimizer(params, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps)
    generator = torch.Generator().manual_seed(config.run.seed * 1000 + accelerator.process_index)
    start_step = 0
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        start_step = load_checkpoint(ckpt, adapter.model, optimizer, scheduler, generator, accelerator)["step"]
    logger = RunLogger(out, config.run.report_to, enabled=accelerator.is_main_process)
    return TrainingRun(config, accelerator, out, adapter, params, lora, optimizer, scheduler, generator, start_step, logger,
                       reference_model)
