"""Which records a step trains on: the order of each epoch, a step's records on each process, and a step's rows
cut into micro-batches. Pure functions of the step, so a resumed run needs only the step number."""
from __future__ import annotations

import functools
import itertools

import torch

from framethink.errors import ConfigError


@functools.lru_cache(maxsize=2)  # a step spans at most two epochs
def _permutation(num_records: int, epoch: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randperm(num_records, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist())


def epoch_order(num_records: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The record order of one epoch, identical on every process and after a resume."""
    if not shuffle:
        return list(range(num_records))
    return list(_permutation(num_records, epoch, seed))


def batch_indices(step: int, per_process: int, rank: int, world: int, num_records: int, seed: int, shuffle: bool) -> list[int]:
    """Record indices of `step` for process `rank`: a pure function of the step, so resume needs only the step.
    The epoch's permutation is drawn once per epoch, not once per record."""
    start = step * per_process * world + rank * per_process
    out = []
    for position in range(start, start + per_process):
        epoch, offset = divmod(position, num_records)
        out.append(_permutation(num_records, epoch, seed)[offset] if shuffle else offset)
    return out


def micro_batches(n: int, parts: int) -> list[slice]:
    """`range(n)` cut into exactly `parts` contiguous slices whose sizes differ by at most one."""
    if n < parts:
        raise ConfigError(f"optim.grad_accum={parts} is more than the {n} rows of a step")
    size, extra = divmod(n, parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]
