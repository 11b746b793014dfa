"""The training engine shared by RL and SFT: processes, trainable parameters, optimiser and schedule,
gradient averaging, atomic checkpoints with exact resume, and logging.

Data parallelism: each process runs its own prompts; after backward the gradients of every trainable
parameter are averaged over processes (one flat all-reduce), then every process takes the same step,
so all ranks hold identical weights. This is DDP's arithmetic without DDP's wrapper, which would not see
the vision features computed outside the wrapped forward. Processes come from `torchrun` (gloo on CPU,
nccl on GPU); accelerate provides the device, the process group and mixed precision.

DeepSpeed ZeRO-2/3: when accelerate is configured for DeepSpeed (`accelerate launch --config_file
configs/accelerate/zero2.yaml`, or its environment variables under torchrun), the model and optimiser go
through `accelerator.prepare` and the DeepSpeed engine partitions gradients and optimiser state (ZeRO-2) and
the parameters too (ZeRO-3). ZeRO-3 gathers each module's parameters in hooks on every submodule, so the
adapter's direct calls (embeddings, vision tower) work unchanged. The engine then owns the gradient
reduction, clipping, the optimiser step and its checkpoint shards; framethink keeps the schedule, the data
order, the RNG and the atomic checkpoint directory.

FSDP2 (`torch.distributed.fsdp.fully_shard`): when accelerate is configured for FSDP version 2
(`configs/accelerate/fsdp.yaml`, or ACCELERATE_USE_FSDP=true FSDP_VERSION=2 ... under torchrun), the engine
shards the policy itself, with the plugin's reshard-after-forward, offload and mixed-precision settings: each
module the adapter names (`fsdp_units`: decoder layers, vision blocks, the modules it calls outside the model's
forward) is its own unit, the input embedding too, then the root. accelerate's own `prepare` is not used: its
auto-wrap by `_no_split_modules` would leave the embedding and the vision tower in the root unit, which the
adapter calls outside the root forward. An input embedding tied to the output head stays whole on every process
(a parameter belongs to one unit, and the root's gradient reduction runs before the adapter's direct embedding
call has added its gradient); the gradients of such whole parameters are averaged by the engine as in the
data-parallel path, FSDP reduces the rest. Generation unshards every unit once (processes generate different
numbers of tokens); checkpoints hold each process's shards (torch.distributed.checkpoint); the export gathers
the full weights. The reference model (RL with a KL term) is a whole, frozen copy taken before sharding: one
model replica per process on top of the shards.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import itertools
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
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from framethink.config import ModelConfig, OptimConfig, TrainConfig, save_config
from framethink.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def deepspeed_requested() -> bool:
    """accelerate's switch for DeepSpeed (set by `accelerate launch` from a DeepSpeed config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def fsdp_requested(accelerator: Accelerator) -> bool:
    """Whether accelerate is configured for FSDP: its own FSDP mode on GPUs, or the environment of an FSDP
    config on CPU processes, which accelerate runs as MULTI_CPU without reading the FSDP settings."""
    return (accelerator.distributed_type == DistributedType.FSDP
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def fsdp_plugin(accelerator: Accelerator) -> FullyShardedDataParallelPlugin | None:
    """accelerate's FSDP settings (None without FSDP): the accelerator's plugin on GPUs, else read from the
    same environment variables `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets."""
    if not fsdp_requested(accelerator):
        return None
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
    else:
        plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP version {plugin.fsdp_version}: framethink runs FSDP2 (fsdp_version: 2, see "
                          "configs/accelerate/fsdp.yaml)")
    return plugin


def shard_model(model: torch.nn.Module, units: list[torch.nn.Module], plugin: FullyShardedDataParallelPlugin) -> None:
    """Apply `fully_shard` to each unit (children before parents), to the input embedding unless it is tied to
    the output head, then to the root, which is fixed as the root at once: FSDP otherwise takes the first unit to
    run forward for the root, and the adapter runs the vision tower and the embedding before the model's forward.
    A tied embedding stays whole (`ignored_params`): its weight is the head's, which the root unit holds, and the
    adapter calls it outside the root forward, after the root's gradients are reduced."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    settings = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload,
                "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy()}
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    for unit in units if tied else [*units, embedding]:
        fully_shard(unit, **settings)
    fully_shard(model, ignored_params=set(embedding.parameters()) if tied else None, **settings)
    model._get_fsdp_state()._lazy_init()  # torch-private: fixes the root before the adapter's first direct call


def fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units of a sharded model."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def make_accelerator(config: TrainConfig) -> Accelerator:
    """One process per `torchrun` / `accelerate launch` worker; bf16 autocast only where a GPU runs it.
    DeepSpeed also runs on CPU processes (gloo), so a DeepSpeed run does not ask accelerate for `cpu`."""
    gpu = torch.cuda.is_available()
    precision = "bf16" if config.model.dtype == "bfloat16" and gpu else "no"
    if deepspeed_requested():
        if not importlib.util.find_spec("deepspeed"):
            raise ConfigError("accelerate is configured for DeepSpeed but deepspeed is not installed "
                              "(pip install 'framethink[deepspeed]')")
        return Accelerator(mixed_precision=precision, gradient_accumulation_steps=config.optim.grad_accum)
    return Accelerator(cpu=not gpu, mixed_precision=precision)


def deepspeed_stage(accelerator: Accelerator) -> int:
    """The ZeRO stage accelerate runs (0 when it does not run DeepSpeed)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def prepare_deepspeed(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      config: TrainConfig) -> tuple[Any, torch.optim.Optimizer]:
    """Wrap `model` and `optimizer` in a DeepSpeed engine from accelerate's DeepSpeed config; returns the engine
    and the optimiser to schedule (accelerate's view of the partitioned optimiser's parameter groups).

    The values the config may leave to "auto" come from the recipe: framethink batches by prompts, not by a
    dataloader, so a micro-batch counts as 1; gradient accumulation and clipping are the recipe's. The
    schedule stays framethink's LambdaLR, built on the returned optimiser, whose parameter groups are the ones
    ZeRO steps."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError("the DeepSpeed config must not define 'optimizer' or 'scheduler': the recipe's optim "
                          "section sets them")
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=config.optim.grad_accum,
              gradient_clipping=config.optim.grad_clip)
    ds.pop("train_batch_size", None)
    _, wrapped = accelerator.prepare(model, optimizer)
    return accelerator.deepspeed_engine_wrapped.engine, wrapped


def check_engine_settings(config: TrainConfig, records: list, accelerator: Accelerator) -> None:
    """What ZeRO-3 and FSDP cannot run, refused before any model loads.

    - Records of more than one kind: ZeRO-3 and FSDP gather each module's parameters collectively when the
      module runs, so every process must run the same modules in each forward (the vision tower on every process
      or on none); a dataset mixing video, image and text-only records breaks that.
    - `optim.grad_accum` > 1: measured with DeepSpeed 0.19 on CPU processes, ZeRO-3 accumulation over two
      micro-batches gave other weights than one batch of the same rows, even for a three-layer toy model and
      DeepSpeed's own loss scaling; ZeRO-2 and the data-parallel engine give the same weights.
    """
    zero3 = deepspeed_stage(accelerator) == 3
    if not (zero3 or fsdp_requested(accelerator)):
        return
    kinds = {r.media_kind or "text": r.origin for r in records}
    if len(kinds) > 1:
        mixes = ", ".join(f"{k} (e.g. {o})" for k, o in sorted(kinds.items()))
        raise ConfigError(f"{'DeepSpeed ZeRO-3' if zero3 else 'FSDP'} needs records of one kind (all video, all "
                          f"image or all text); the data mixes {mixes}. Use ZeRO-2 (configs/accelerate/zero2.yaml) "
                          "or data parallelism for mixed data.")
    if zero3 and config.optim.grad_accum > 1:
        raise ConfigError(f"optim.grad_accum={config.optim.grad_accum}: DeepSpeed ZeRO-3 runs here with "
                          "grad_accum 1 (raise optim.prompts_per_step instead, or use ZeRO-2)")


def deepspeed_reference(config: TrainConfig, accelerator: Accelerator) -> torch.nn.Module:
    """The frozen reference model under ZeRO-3: loaded again from the recipe's checkpoint (transformers
    partitions it while loading, so it cannot be copied from the policy) and wrapped in an inference-only
    DeepSpeed engine whose hooks gather each module's parameters in its forward."""
    import deepspeed

    model = build_adapter(config, str(accelerator.device)).model.eval().requires_grad_(False)
    policy = accelerator.state.deepspeed_plugin.deepspeed_config  # "auto" values filled by `prepare`
    ds = {k: copy.deepcopy(policy[k]) for k in ("zero_optimization", "bf16", "fp16") if k in policy}
    ds["train_micro_batch_size_per_gpu"] = 1
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    return engine.module


# ---------------------------------------------------------------------------- processes
# Ranks come from torch.distributed itself: under DeepSpeed on CPU processes accelerate reports a single
# process (it knows no DeepSpeed-on-CPU state), while the process group DeepSpeed set up is the true one.
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def process_rank() -> int:
    return dist.get_rank() if _distributed() else 0


def process_count() -> int:
    return dist.get_world_size() if _distributed() else 1


def is_main_process() -> bool:
    return process_rank() == 0


def wait_for_everyone() -> None:
    if _distributed():
        dist.barrier()


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


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every trainable gradient over all processes (a missing gradient counts as zero)."""
    if not params or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def sum_over_processes(values: list[float], device: torch.device | str) -> list[float]:
    """Each value summed over all processes in one all-reduce (a step's token count, for token-level loss
    normalisation: docs/method.md#normalisation-across-micro-batches-and-processes)."""
    if not _distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)  # [K]
    dist.all_reduce(total)
    return total.tolist()


def mean_over_processes(metrics: dict[str, float], accelerator: Accelerator) -> dict[str, float]:
    """Each metric averaged over processes in ONE collective; NaN entries (e.g. the temporal statistics of a
    process whose batch holds no video) are left out of the mean, and a metric NaN everywhere is dropped.
    Every process must report the same keys."""
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=accelerator.device)  # [K]
    if _distributed():
        gathered = [torch.empty_like(values) for _ in range(process_count())]
        dist.all_gather(gathered, values)
        values = torch.stack(gathered)  # [world, K]
    values = values.view(-1, len(keys)).cpu()  # [world, K]
    means = values.nanmean(0).tolist()
    return {k: v for k, v in zip(keys, means) if not math.isnan(v)}


def micro_batches(n: int, parts: int) -> list[slice]:
    """`range(n)` cut into exactly `parts` contiguous slices whose sizes differ by at most one."""
    if n < parts:
        raise ConfigError(f"optim.grad_accum={parts} is more than the {n} rows of a step")
    size, extra = divmod(n, parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------- checkpoints
CHECKPOINT_PREFIX = "step-"
DEEPSPEED_TAG = "deepspeed"  # the sub-directory of a checkpoint holding DeepSpeed's shards
FSDP_TAG = "fsdp"  # the sub-directory of a checkpoint holding the FSDP shards (torch.distributed.checkpoint)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest COMPLETE checkpoint: only fully written directories carry the `step-` name."""
    done = sorted((out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*"))
    return done[-1] if done else None


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": generator.get_state()}


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trainable weights and the optimiser state of an FSDP model as this process's shards (frozen weights
    come from the recipe's checkpoint, as in the data-parallel checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": weights, "optimizer": optim}


def save_checkpoint(
    out: Path, step: int, model: torch.nn.Module, trainable: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator, accelerator: Accelerator,
    state: dict[str, Any], engine: Any = None, sharded: bool = False,
) -> Path:
    """Write `checkpoints/step-NNNNNN` atomically: everything goes to a temporary directory that is renamed
    only when complete, so a crash never leaves a checkpoint that resume would pick. Under DeepSpeed every
    process writes its own shards of the weights and optimiser state (`engine.save_checkpoint`), under FSDP
    (`sharded`) torch.distributed.checkpoint does."""
    root = out / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = root / f".tmp-{step:06d}"
    rank = process_rank()
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait_for_everyone()
    torch.save(_rng_state(generator), tmp / f"rng-rank{rank}.pt")
    if engine is not None:
        engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG)
    if sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp / FSDP_TAG)
    if is_main_process():
        if engine is None and not sharded:
            names = {id(p): n for n, p in model.named_parameters()}
            torch.save({names[id(p)]: p.detach().cpu() for p in trainable}, tmp / "trainable.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    wait_for_everyone()
    if is_main_process():
        os.replace(tmp, final)
    wait_for_everyone()
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    generator: torch.Generator, accelerator: Accelerator, engine: Any = None, sharded: bool = False,
) -> dict[str, Any]:
    """Restore weights, optimiser, schedule and every RNG; return the saved trainer state."""
    if engine is not None:
        engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)
    elif sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_state_dict,
        )

        state = _sharded_state(model, optimizer)  # the layout to read into: `dcp.load` fails on any key it lacks
        dcp.load(state, checkpoint_id=path / FSDP_TAG)
        # not strict: the frozen weights are not in the checkpoint, and keep the values loaded from the recipe's
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))
    else:
        weights = torch.load(path / "trainable.pt", map_location="cpu")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    rng = torch.load(path / f"rng-rank{process_rank()}.pt", map_location="cpu", weights_only=False)
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
            f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)

    def close(self) -> None:
        for kind, writer in self._writers:
            writer.close() if kind == "tensorboard" else writer.finish()


def prepare_run_dir(config: TrainConfig, accelerator: Accelerator) -> Path:
    out = Path(config.run.out)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    wait_for_everyone()
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
        lora = apply_lora(adapter.model, config.model, config.run.seed)
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
    engine: Any = None  # the DeepSpeed engine around the policy when accelerate runs DeepSpeed, else None
    fsdp: FullyShardedDataParallelPlugin | None = None  # the FSDP settings the policy is sharded with, else None

    @property
    def rank(self) -> int:
        return process_rank()

    @property
    def world(self) -> int:
        return process_count()

    def steps(self, desc: str, quiet: bool):
        """The remaining steps, with a progress bar and ETA on the main process."""
        from tqdm.auto import tqdm

        total = self.config.run.max_steps
        return tqdm(range(self.start_step, total), initial=self.start_step, total=total, desc=desc,
                    disable=quiet or not is_main_process())

    def batch_indices(self, step: int, num_records: int) -> list[int]:
        c = self.config
        return batch_indices(step, c.optim.prompts_per_step, self.rank, self.world, num_records, c.run.seed, c.data.shuffle)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, already weighted by its share of the step. The step has exactly
        `grad_accum` micro-batches (`micro_batches`), which is what DeepSpeed's accumulation counter expects."""
        if self.engine is None:
            loss.backward()
            return
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss carries its share already
        self.engine.step()  # counts the micro-batch; DeepSpeed updates the weights after every `grad_accum`-th

    def optimizer_step(self) -> float:
        """Average gradients over processes, clip, step; returns the gradient norm before clipping. FSDP has
        reduced the gradients of the sharded parameters in backward; the whole ones are averaged here."""
        if self.engine is not None:  # DeepSpeed reduced, clipped and stepped its partitions in `backward`
            return float(self.engine.get_global_grad_norm())
        average_gradients([p for p in self.params if not isinstance(p, DTensor)])
        norm = clip_gradients(self.params, self.config.optim.grad_clip)
        if self.fsdp is not None:  # the step updates the shards: no unit may keep a stale copy
            for unit in fsdp_modules(self.adapter.model):
                unit.reshard()
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
                            self.generator, self.accelerator, {}, engine=self.engine, sharded=self.fsdp is not None)
        return metrics

    def finish(self) -> Path:
        """Close the logs and export the final model in the Hugging Face layout (LoRA merged), with
        `framethink.json` recording the template, system message and frame rule it was trained with."""
        from framethink.model_card import write_model_card
        from framethink.models.registry import write_training_settings

        self.logger.close()
        if self.fsdp is not None:
            self._unshard_for_export()
        self.adapter.model.eval()
        final = self.out / "final"
        with self.full_parameters():
            if self.lora is not None:
                self.adapter.model = self.lora.merge_and_unload()
            if deepspeed_stage(self.accelerator) == 3:
                # transformers' ZeRO-3 loading attaches its legacy key renamings to the model, and reverting them
                # on save would write `model.model.*` names; without them it writes the layout a plain load reads
                self.adapter.model._weight_conversions = None
            if is_main_process():
                self.adapter.save_pretrained(final)
                write_training_settings(final, template=self.config.data.template, system=self.config.data.system,
                                        frames=self.adapter.frames)
                write_model_card(final, self.config, self.out, processes=self.world)
        wait_for_everyone()
        return final

    def _unshard_for_export(self) -> None:
        """Replace the sharded policy by a whole one: the recipe's model built again (LoRA modules injected when
        they train) holding the full weights gathered from every process, so the export is the plain one."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        weights = get_model_state_dict(self.adapter.model, options=StateDictOptions(full_state_dict=True))
        model = build_adapter(self.config, str(self.accelerator.device)).model
        self.lora = apply_lora(model, self.config.model, self.config.run.seed) if self.lora is not None else None
        model.load_state_dict(weights)
        self.adapter.model = model

    def generation_context(self):
        """A context for the rollout. Under ZeRO-3 and FSDP it gathers the policy's parameters once and keeps
        them gathered (ZeRO-3: lifts DeepSpeed's per-module hooks), so generation runs without collectives:
        processes generate different numbers of tokens, and per-module gathering would leave them waiting on
        each other."""
        if self.fsdp is not None:
            return unsharded(self.adapter.model, self.fsdp.reshard_after_forward)
        if deepspeed_stage(self.accelerator) < 3:
            return contextlib.nullcontext()
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        return unwrap_model_for_generation(self.engine)

    def full_parameters(self):
        """A context in which every parameter is whole on every process: ZeRO-3 gathers its partitions."""
        if self.engine is None or self.engine.zero_optimization_stage() < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.adapter.model.parameters()))


@contextlib.contextmanager
def unsharded(model: torch.nn.Module, reshard_after_forward: bool):
    """Every FSDP unit of `model` gathered once and kept whole through the forwards inside; resharded on exit,
    each unit back to `reshard_after_forward` (the root to False, FSDP's own choice for it)."""
    units = fsdp_modules(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(reshard_after_forward and unit is not model, recurse=False)
            unit.reshard()


def start_run(config: TrainConfig, accelerator: Accelerator, *, resume: bool, reference: bool = False,
              num_records: int | None = None) -> TrainingRun:
    """Load the model through its adapter, keep a frozen copy of it as the reference model when asked, apply
    freezing / LoRA / gradient checkpointing, shard the policy under FSDP, build the optimiser and schedule, and
    restore the newest complete checkpoint when resuming (the reference stays the initial policy). `num_records`
    (the training file's size) sets the schedule's horizon under `optim.schedule_epochs`."""
    plugin = fsdp_plugin(accelerator)
    out = prepare_run_dir(config, accelerator)
    adapter = build_adapter(config, str(accelerator.device))
    zero3 = deepspeed_stage(accelerator) == 3
    reference_model = copy.deepcopy(adapter.model).eval().requires_grad_(False) if reference and not zero3 else None
    if config.model.gradient_checkpointing:
        adapter.model.gradient_checkpointing_enable()
    params, lora = trainable_parameters(adapter, config)
    if plugin is not None:
        shard_model(adapter.model, adapter.fsdp_units(), plugin)
        params = [p for p in adapter.model.parameters() if p.requires_grad]  # the shards (DTensors) now
    optimizer = build_optimizer(params, config.optim)
    engine = None
    if deepspeed_stage(accelerator):
        engine, optimizer = prepare_deepspeed(accelerator, adapter.model, optimizer, config)
        if reference and zero3:
            reference_model = deepspeed_reference(config, accelerator)
    if config.optim.schedule_epochs is not None and num_records is None:
        raise ConfigError("optim.schedule_epochs: the schedule's horizon needs the number of training records")
    scheduler = build_scheduler(optimizer, config.optim, schedule_horizon(config, num_records or 0, process_count()))
    generator = torch.Generator().manual_seed(config.run.seed * 1000 + process_rank())
    start_step = 0
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        start_step = load_checkpoint(ckpt, adapter.model, optimizer, scheduler, generator, accelerator, engine,
                                     sharded=plugin is not None)["step"]
    logger = RunLogger(out, config.run.report_to, enabled=is_main_process())
    return TrainingRun(config, accelerator, out, adapter, params, lora, optimizer, scheduler, generator, start_step, logger,
                       reference_model, engine, plugin)
