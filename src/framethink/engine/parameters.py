"""The policy and what trains in it: the adapter built from the recipe, the freeze switches or LoRA adapters,
the optimiser, the learning-rate schedule and gradient clipping."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from framethink.config import ModelConfig, OptimConfig, TrainConfig
from framethink.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward. transformers 5.2x renamed `gradient_checkpointing_enable` to
    `activation_checkpointing_enable` (the old name warns); earlier 5.x releases have only the old name."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


def trainable_parameters(adapter, config: TrainConfig) -> tuple[list[torch.nn.Parameter], Any]:
    """Freeze switches, or LoRA adapters when enabled; returns (parameters, peft LoRA model or None)."""
    if config.model.lora.enabled:
        lora = apply_lora(adapter.model, config.model, config.run.seed)
        return [p for p in adapter.model.parameters() if p.requires_grad], lora
    return set_trainable(adapter.parameter_groups(), config.model), None


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


def apply_lora(model: torch.nn.Module, config: ModelConfig, seed: int):
    """Inject LoRA adapters (peft) into `model` in place; only they train. Returns the peft `LoraModel`,
    whose `merge_and_unload()` gives back the plain model with merged weights for export. The random initial
    LoRA weights come from `seed`, the same on every process: the processes' own generators are seeded by rank,
    and data parallelism and FSDP both need every process to start from the same weights."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    from framethink.models.registry import lora_targets

    lora = config.lora
    targets = lora.target_modules or lora_targets(model)  # unset: the model family's
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LoraModel(model, peft_config, "default")


def build_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms are not decayed
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas),
    )


def schedule_horizon(config: TrainConfig, num_records: int, world: int) -> int:
    """Steps of the learning-rate schedule (docs/method.md#learning-rate-horizon): `optim.schedule_steps`, or
    `optim.schedule_epochs` epochs of `num_records` records counted as transformers' Trainer counts them with one
    record per process and micro-batch (`ceil(epochs * (ceil(num_records / world) // prompts_per_step))`), or
    else `run.max_steps`. A reference run that stopped early keeps its schedule's horizon, not its stopping step."""
    optim = config.optim
    if optim.schedule_steps is not None:
        return optim.schedule_steps
    if optim.schedule_epochs is not None:
        per_epoch = max(1, math.ceil(num_records / world) // optim.prompts_per_step)
        return math.ceil(optim.schedule_epochs * per_epoch)
    return config.run.max_steps


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then cosine or linear decay to 0 at `total_steps` (0 beyond it), or constant: the
    factors of transformers' schedules (transformers/optimization.py, `_get_cosine_schedule_with_warmup_lr_lambda`,
    `_get_linear_schedule_with_warmup_lr_lambda`), warm-up steps as `TrainingArguments.get_warmup_steps` counts
    them, so a recipe reproduces a reference run's rate at every step."""
    warmup = optim.warmup_steps or math.ceil(optim.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if optim.schedule == "constant":
            return 1.0
        if optim.schedule == "linear":
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale the gradients to a global norm of at most `max_norm`; returns the norm before clipping. The norm of
    FSDP-sharded gradients (DTensors, one norm needs all processes) is combined with that of the whole ones: the
    two kinds cannot share one norm computation."""
    kinds = [[p for p in params if p.grad is not None and isinstance(p, DTensor) == sharded] for sharded in (True, False)]
    kinds = [group for group in kinds if group]
    norms = [torch.nn.utils.get_total_norm([p.grad for p in group]) for group in kinds]
    total = torch.linalg.vector_norm(torch.stack([n.full_tensor() if isinstance(n, DTensor) else n for n in norms]))
    for group in kinds:
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total.item()
