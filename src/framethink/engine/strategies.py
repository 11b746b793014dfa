"""How the policy is spread over processes: one strategy object per backend, chosen once from accelerate's
configuration (`select_strategy`). Each owns what differs between backends: preparing the policy (sharding or
wrapping it, and its reference model), backward, the optimiser step, the generation context, its part of a
checkpoint (save and load) and the whole weights for the export. The loop and the checkpoint code call these
and never ask which backend runs.

DataParallel: each process runs its own prompts; after backward the gradients of every trainable parameter are
averaged over processes (one flat all-reduce), then every process takes the same step, so all ranks hold
identical weights. This is DDP's arithmetic without DDP's wrapper, which would not see the vision features
computed outside the wrapped forward. Processes come from `torchrun` (gloo on CPU, nccl on GPU); accelerate
provides the device, the process group and mixed precision.

DeepSpeed ZeRO-2/3: when accelerate is configured for DeepSpeed (`accelerate launch --config_file
configs/accelerate/zero2.yaml`, or its environment variables under torchrun), the model and optimiser go through
`accelerator.prepare` and the DeepSpeed engine partitions gradients and optimiser state (ZeRO-2) and the
parameters too (ZeRO-3). ZeRO-3 gathers each module's parameters in hooks on every submodule, so the adapter's
direct calls (embeddings, vision tower) work unchanged. The engine then owns the gradient reduction, clipping,
the optimiser step (it skips a step whose gradient norm is not finite) and its checkpoint shards; framethink
keeps the schedule, the data order, the RNG and the atomic checkpoint directory.

FSDP2 (`torch.distributed.fsdp.fully_shard`): when accelerate is configured for FSDP version 2
(`configs/accelerate/fsdp.yaml`, or ACCELERATE_USE_FSDP=true FSDP_VERSION=2 ... under torchrun), the policy is
sharded here, with the plugin's reshard-after-forward, offload and mixed-precision settings: each module the
adapter names (`fsdp_units`: decoder layers, vision blocks, the modules it calls outside the model's forward) is
its own unit, the input embedding too, then the root. accelerate's own `prepare` is not used: its auto-wrap by
`_no_split_modules` would leave the embedding and the vision tower in the root unit, which the adapter calls
outside the root forward. An input embedding tied to the output head stays whole on every process (a parameter
belongs to one unit, and the root's gradient reduction runs before the adapter's direct embedding call has added
its gradient); the gradients of such whole parameters are averaged as in the data-parallel path, FSDP reduces
the rest. Generation unshards every unit once (processes generate different numbers of tokens); checkpoints hold
each process's shards (torch.distributed.checkpoint); the export gathers the full weights. The reference model
(RL with a KL term) is a whole, frozen copy taken before sharding: one model replica per process on top of the
shards.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor

from framethink.config import TrainConfig
from framethink.engine import parameters
from framethink.engine.processes import average_gradients
from framethink.errors import ConfigError

DEEPSPEED_TAG = "deepspeed"  # the sub-directory of a checkpoint holding DeepSpeed's shards
FSDP_TAG = "fsdp"  # the sub-directory of a checkpoint holding the FSDP shards (torch.distributed.checkpoint)


@dataclass
class Policy:
    """What `prepare` hands the run: the parameters the optimiser steps (shards under FSDP), the peft
    LoRA model (or None), the optimiser, and the frozen reference model (or None)."""

    params: list[torch.nn.Parameter]
    lora: Any
    optimizer: torch.optim.Optimizer
    reference: torch.nn.Module | None


class DataParallel:
    """Whole weights on every process; gradients averaged over processes before every process takes the same
    step (the module docstring). Also what a single process runs."""

    name = "data parallelism"
    node_local_checkpoints = True  # a checkpoint is complete on any node that wrote it (run.shared_filesystem)

    def check_records(self, config: TrainConfig, records: list) -> None:
        """Refuse, before any model loads, what this backend cannot run."""
        if not config.run.shared_filesystem and not self.node_local_checkpoints:
            raise ConfigError(f"run.shared_filesystem=false: {self.name} writes one checkpoint of shards that every "
                              "node must read; run it on a filesystem every node sees, or use data parallelism")

    def prepare(self, adapter, config: TrainConfig, *, reference: bool) -> Policy:
        """Keep a frozen copy of the loaded policy as the reference when asked, apply gradient checkpointing,
        freezing or LoRA, then distribute the policy and build its optimiser."""
        initial = self._initial_copy(adapter.model) if reference else None
        if config.model.gradient_checkpointing:
            parameters.enable_activation_checkpointing(adapter.model)
        params, lora = parameters.trainable_parameters(adapter, config)
        params = self._distribute(adapter, params)
        optimizer = self._wrap(adapter.model, parameters.build_optimizer(params, config.optim), config)
        return Policy(params, lora, optimizer, self._reference(initial, config) if reference else None)

    def _initial_copy(self, model: torch.nn.Module) -> torch.nn.Module | None:
        return copy.deepcopy(model).eval().requires_grad_(False)

    def _distribute(self, adapter, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        return params

    def _wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.Optimizer:
        return optimizer

    def _reference(self, initial: torch.nn.Module | None, config: TrainConfig) -> torch.nn.Module | None:
        return initial

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss, already weighted by its share of the step."""
        loss.backward()

    def reduce_gradients(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Average the gradients over processes and clip them; returns the global norm before clipping."""
        average_gradients([p for p in params if not isinstance(p, DTensor)])
        return parameters.clip_gradients(params, max_norm)

    def apply(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Take the optimiser step on the reduced gradients."""
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def discard(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the step's gradients without an update (a non-finite loss or gradient)."""
        optimizer.zero_grad(set_to_none=True)

    def generation_context(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """A context for the rollout's generate calls."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def whole_policy(self, adapter, lora: Any, config: TrainConfig) -> Iterator[Any]:
        """A context in which `adapter.model` holds the whole weights on every process, for the export; yields
        the peft LoRA model to merge (or None)."""
        yield lora

    def save(self, directory: Path, model: torch.nn.Module, params: list[torch.nn.Parameter],
             optimizer: torch.optim.Optimizer, writer: bool) -> None:
        """Write the trainable weights and the optimiser state into `directory` (frozen weights come from the
        recipe's checkpoint). Every process calls it; `writer` says whether this one writes the shared files."""
        if not writer:
            return
        names = {id(p): n for n, p in model.named_parameters()}
        torch.save({names[id(p)]: p.detach().cpu() for p in params}, directory / "trainable.pt")
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")

    def load(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Restore what `save` wrote."""
        weights = torch.load(directory / "trainable.pt", map_location="cpu")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu"))

    def checkpoint_bytes(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
        """About how many bytes `save` writes over all processes: the trainable weights and the optimiser's
        state tensors (a sharded DTensor's numel is already its whole size)."""
        tensors = [*params, *(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))]
        return sum(t.numel() * t.element_size() for t in tensors)


class FSDP2(DataParallel):
    """The policy sharded with `fully_shard` (the module docstring); settings from accelerate's FSDP plugin."""

    name = "FSDP"
    node_local_checkpoints = False

    def __init__(self, accelerator: Accelerator) -> None:
        """Reads accelerate's FSDP settings: the accelerator's plugin on GPUs, else the same environment variables
        `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets."""
        self.accelerator = accelerator
        if accelerator.distributed_type == DistributedType.FSDP:
            self.plugin = accelerator.state.fsdp_plugin
        else:
            self.plugin = FullyShardedDataParallelPlugin()
        if self.plugin.fsdp_version != 2:
            raise ConfigError(f"FSDP version {self.plugin.fsdp_version}: framethink runs FSDP2 (fsdp_version: 2, "
                              "see configs/accelerate/fsdp.yaml)")

    def check_records(self, config: TrainConfig, records: list) -> None:
        """FSDP gathers each module's parameters collectively when the module runs, so every process must run
        the same modules in each forward (the vision tower on every process or on none): records of one kind."""
        super().check_records(config, records)
        _one_kind(records, "FSDP")

    def _distribute(self, adapter, params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        shard_model(adapter.model, adapter.fsdp_units(), self.plugin)
        return [p for p in adapter.model.parameters() if p.requires_grad]  # the shards (DTensors) now

    def apply(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The step updates the shards: no unit may keep a stale whole copy."""
        for unit in fsdp_modules(model):
            unit.reshard()
        super().apply(model, optimizer)

    def generation_context(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Every unit gathered once and kept whole: processes generate different numbers of tokens, and
        per-module gathering would leave them waiting on each other."""
        return unsharded(model, self.plugin.reshard_after_forward)

    @contextlib.contextmanager
    def whole_policy(self, adapter, lora: Any, config: TrainConfig) -> Iterator[Any]:
        """Replace the sharded policy by a whole one: the recipe's model built again (LoRA modules injected when
        they train) holding the full weights gathered from every process, so the export is the plain one."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(adapter.model, options=StateDictOptions(full_state_dict=True))
        model = parameters.build_adapter(config, str(self.accelerator.device)).model
        lora = parameters.apply_lora(model, config.model, config.run.seed) if lora is not None else None
        model.load_state_dict(weights)
        adapter.model = model
        yield lora

    def save(self, directory: Path, model: torch.nn.Module, params: list[torch.nn.Parameter],
             optimizer: torch.optim.Optimizer, writer: bool) -> None:
        """Each process writes its shards of the trainable weights and the optimiser state."""
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer), checkpoint_id=directory / FSDP_TAG)

    def load(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = _sharded_state(model, optimizer)  # the layout to read into: `dcp.load` fails on any key it lacks
        dcp.load(state, checkpoint_id=directory / FSDP_TAG)
        # not strict: the frozen weights are not in the checkpoint, and keep the values loaded from the recipe's
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))


class DeepSpeed(DataParallel):
    """accelerate's DeepSpeed engine around the policy and its optimiser (the module docstring)."""

    name = "DeepSpeed"
    node_local_checkpoints = False

    def __init__(self, accelerator: Accelerator, stage: int) -> None:
        self.accelerator, self.stage = accelerator, stage
        self.engine: Any = None

    def check_records(self, config: TrainConfig, records: list) -> None:
        """ZeRO-3 gathers each module's parameters collectively when it runs: records of one kind, as under
        FSDP. `optim.grad_accum` > 1 is refused under ZeRO-3: measured with DeepSpeed 0.19 on CPU processes,
        accumulation over two micro-batches gave other weights than one batch of the same rows, even for a
        three-layer toy model and DeepSpeed's own loss scaling; ZeRO-2 and data parallelism give the same
        weights."""
        super().check_records(config, records)
        if self.stage < 3:
            return
        _one_kind(records, "DeepSpeed ZeRO-3")
        if config.optim.grad_accum > 1:
            raise ConfigError(f"optim.grad_accum={config.optim.grad_accum}: DeepSpeed ZeRO-3 runs here with "
                              "grad_accum 1 (raise optim.prompts_per_step instead, or use ZeRO-2)")

    def _initial_copy(self, model: torch.nn.Module) -> torch.nn.Module | None:
        # ZeRO-3 loading partitions the weights: the reference is built from the recipe's checkpoint instead
        return super()._initial_copy(model) if self.stage < 3 else None

    def _wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.Optimizer:
        """Wrap the policy and its optimiser in a DeepSpeed engine from accelerate's DeepSpeed config; returns the
        optimiser to schedule (accelerate's view of the partitioned optimiser's parameter groups).

        The values the config may leave to "auto" come from the recipe: framethink batches by prompts, not by a
        dataloader, so a micro-batch counts as 1; gradient accumulation and clipping are the recipe's. The
        schedule stays framethink's LambdaLR, built on the returned optimiser."""
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        if "optimizer" in ds or "scheduler" in ds:
            raise ConfigError("the DeepSpeed config must not define 'optimizer' or 'scheduler': the recipe's optim "
                              "section sets them")
        ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=config.optim.grad_accum,
                  gradient_clipping=config.optim.grad_clip)
        ds.pop("train_batch_size", None)
        _, wrapped = self.accelerator.prepare(model, optimizer)
        self.engine = self.accelerator.deepspeed_engine_wrapped.engine
        return wrapped

    def _reference(self, initial: torch.nn.Module | None, config: TrainConfig) -> torch.nn.Module | None:
        """Under ZeRO-3 the frozen reference is loaded again from the recipe's checkpoint (transformers partitions
        it while loading) and wrapped in an inference-only DeepSpeed engine whose hooks gather each module's
        parameters in its forward."""
        if initial is not None:
            return initial
        import deepspeed

        model = parameters.build_adapter(config, str(self.accelerator.device)).model.eval().requires_grad_(False)
        policy = self.accelerator.state.deepspeed_plugin.deepspeed_config  # "auto" values filled by `prepare`
        ds = {k: copy.deepcopy(policy[k]) for k in ("zero_optimization", "bf16", "fp16") if k in policy}
        ds["train_micro_batch_size_per_gpu"] = 1
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        return engine.module

    def backward(self, loss: torch.Tensor) -> None:
        """The step has exactly `grad_accum` micro-batches, which is what DeepSpeed's accumulation counter
        expects: it updates the weights after every `grad_accum`-th."""
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss carries its share already
        self.engine.step()

    def reduce_gradients(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """DeepSpeed reduced, clipped and stepped its partitions in `backward` (a non-finite norm: it skipped)."""
        return float(self.engine.get_global_grad_norm())

    def apply(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Done by the engine in `backward`."""

    def discard(self, optimizer: torch.optim.Optimizer) -> None:
        """Done by the engine: its overflow check skipped the step and cleared the gradients."""

    def generation_context(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Under ZeRO-3 the parameters are gathered once and kept gathered (lifting DeepSpeed's per-module
        hooks), so generation runs without collectives."""
        if self.stage < 3:
            return contextlib.nullcontext()
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        return unwrap_model_for_generation(self.engine)

    @contextlib.contextmanager
    def whole_policy(self, adapter, lora: Any, config: TrainConfig) -> Iterator[Any]:
        """ZeRO-3 gathers its partitions for the export."""
        if self.stage < 3:
            yield lora
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(adapter.model.parameters())):
            # transformers' ZeRO-3 loading attaches its legacy key renamings to the model, and reverting them on
            # save would write `model.model.*` names; without them it writes the layout a plain load reads
            adapter.model._weight_conversions = None
            yield lora

    def save(self, directory: Path, model: torch.nn.Module, params: list[torch.nn.Parameter],
             optimizer: torch.optim.Optimizer, writer: bool) -> None:
        """Every process writes its own shards of the weights and optimiser state."""
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG)

    def load(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)

    def checkpoint_bytes(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
        """The trainable weights in their own precision plus fp32 master weights and Adam's two moments (the
        partitions of every process together; ZeRO-3 parameters report their full size as `ds_numel`)."""
        numel = [getattr(p, "ds_numel", p.numel()) for p in params]
        return sum(n * p.element_size() + 3 * 4 * n for n, p in zip(numel, params))


def _one_kind(records: list, backend: str) -> None:
    """Refuse a dataset mixing video, image and text-only records (every process must run the same modules)."""
    kinds = {r.media_kind or "text": r.origin for r in records}
    if len(kinds) > 1:
        mixes = ", ".join(f"{k} (e.g. {o})" for k, o in sorted(kinds.items()))
        raise ConfigError(f"{backend} needs records of one kind (all video, all image or all text); the data mixes "
                          f"{mixes}. Use ZeRO-2 (configs/accelerate/zero2.yaml) or data parallelism for mixed data.")


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trainable weights and the optimiser state of an FSDP model as this process's shards (frozen weights
    come from the recipe's checkpoint, as in the data-parallel checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": weights, "optimizer": optim}


# ---------------------------------------------------------------------------- choosing the strategy
def deepspeed_requested() -> bool:
    """accelerate's switch for DeepSpeed (set by `accelerate launch` from a DeepSpeed config)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def fsdp_requested(accelerator: Accelerator) -> bool:
    """Whether accelerate is configured for FSDP: its own FSDP mode on GPUs, or the environment of an FSDP
    config on CPU processes, which accelerate runs as MULTI_CPU without reading the FSDP settings."""
    return (accelerator.distributed_type == DistributedType.FSDP
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def deepspeed_stage(accelerator: Accelerator) -> int:
    """The ZeRO stage accelerate runs (0 when it does not run DeepSpeed)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


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


def select_strategy(accelerator: Accelerator) -> DataParallel:
    """The one place the backend is chosen, from accelerate's configuration (FSDP2 and DeepSpeed are data
    parallelism with sharded state, and subclass it)."""
    if fsdp_requested(accelerator):
        return FSDP2(accelerator)
    if stage := deepspeed_stage(accelerator):
        return DeepSpeed(accelerator, stage)
    return DataParallel()


def check_engine_settings(config: TrainConfig, records: list, accelerator: Accelerator) -> None:
    """What the configured backend cannot run, refused before any model loads."""
    select_strategy(accelerator).check_records(config, records)


# ---------------------------------------------------------------------------- FSDP2 helpers

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
