"""The training engine shared by RL and SFT, one module per job:

    processes    ranks, the processes that write files, gradient and metric averages
    parameters   the policy's adapter, freezing / LoRA, optimiser, learning-rate schedule, gradient clipping
    strategies   data parallelism, DeepSpeed ZeRO-2/3 and FSDP2 as strategy objects (backward, optimiser step,
                 generation context, checkpoint save / load, export, reference model)
    checkpoint   atomic checkpoints with exact resume
    data_order   the records of each step on each process, micro-batches
    logging      the run directory, metrics, samples, events
    faults       stop signals, the media check before any model loads
    run          one training run: `start_run` builds a `TrainingRun`, whose steps the RL and SFT loops drive

The names below are the ones the trainers, benchmarks and tests use.
"""
from framethink.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from framethink.engine.data_order import batch_indices, epoch_order, micro_batches
from framethink.engine.logging import RunLogger
from framethink.engine.parameters import (
    apply_lora,
    build_adapter,
    build_optimizer,
    build_scheduler,
    schedule_horizon,
    set_trainable,
    trainable_parameters,
)
from framethink.engine.processes import (
    is_main_process,
    process_count,
    process_rank,
    seed_everything,
    sum_over_processes,
)
from framethink.engine.run import TrainingRun, check_before_loading, start_run
from framethink.engine.strategies import DataParallel, DeepSpeed, FSDP2, check_engine_settings, make_accelerator

__all__ = [
    "DataParallel", "DeepSpeed", "FSDP2", "RunLogger", "TrainingRun", "apply_lora", "batch_indices",
    "build_adapter", "build_optimizer", "build_scheduler", "check_before_loading", "check_engine_settings",
    "epoch_order", "is_main_process", "latest_checkpoint", "load_checkpoint", "make_accelerator", "micro_batches",
    "process_count", "process_rank", "save_checkpoint", "schedule_horizon", "seed_everything", "set_trainable",
    "start_run", "sum_over_processes", "trainable_parameters",
]
