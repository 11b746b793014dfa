"""Processes and ranks: who this process is, which processes write files, and the few collectives the engine
makes (gradient and metric averages, agreement on a flag).

Ranks come from torch.distributed itself: under DeepSpeed on CPU processes accelerate reports a single process
(it knows no DeepSpeed-on-CPU state), while the process group DeepSpeed set up is the true one.
"""
from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def process_rank() -> int:
    return dist.get_rank() if distributed() else 0


def process_count() -> int:
    return dist.get_world_size() if distributed() else 1


def local_rank() -> int:
    """The rank of this process on its node (torchrun and accelerate set LOCAL_RANK; a lone process is 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return process_rank() == 0


def writes_run_files(shared_filesystem: bool) -> bool:
    """Whether this process writes the run's shared files (config, checkpoint weights, export): the first process
    of the run when every node sees the same run directory, else the first process of each node, so that every
    node holds a complete copy it can resume from."""
    return is_main_process() if shared_filesystem else local_rank() == 0


def wait_for_everyone() -> None:
    if distributed():
        dist.barrier()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on at least one (one collective; no collective alone)."""
    if not distributed():
        return flag
    # nccl reduces GPU tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(value: Any) -> list[Any]:
    """`value` of every process, in rank order, on every process."""
    if not distributed():
        return [value]
    out: list[Any] = [None] * process_count()
    dist.all_gather_object(out, value)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Mean of every gradient in `params` over all processes (a missing gradient counts as zero), one flat
    all-reduce: DDP's arithmetic without DDP's wrapper, which would not see the vision features the adapter
    computes outside the wrapped forward."""
    if not params or process_count() == 1:
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
    if not distributed():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)  # [K]
    dist.all_reduce(total)
    return total.tolist()


def mean_over_processes(metrics: dict[str, float], device: torch.device | str) -> dict[str, float]:
    """Each metric averaged over processes in ONE collective; NaN entries (e.g. the temporal statistics of a
    process whose batch holds no video) are left out of the mean, and a metric NaN everywhere is dropped.
    Every process must report the same keys."""
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)  # [K]
    if distributed():
        gathered = [torch.empty_like(values) for _ in range(process_count())]
        dist.all_gather(gathered, values)
        values = torch.stack(gathered)  # [world, K]
    values = values.view(-1, len(keys)).cpu()  # [world, K]
    means = values.nanmean(0).tolist()
    return {k: v for k, v in zip(keys, means) if not math.isnan(v)}
