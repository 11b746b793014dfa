"""Shared set-up of the benchmark scripts: threads, timing, synthetic records and clips, recipes, one
framethink RL step (`framethink.rl.step.rl_step`, the very function `train_rl` calls) with its phases timed, the
adapter with prefix sharing turned off, and adapters with frozen-tower reuse turned off.

Every script prints one JSON object (settings, min/median/max seconds, ratios) and a short table; the numbers
in BENCHMARKS.md are copied from those outputs.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache, PreTrainedModel

from framethink.config import TrainConfig, load_config
from framethink.data.records import Record, load_records
from framethink.data.synth import write_synthetic_dataset
from framethink.engine import (
    RunLogger, TrainingRun, build_optimizer, build_scheduler, make_accelerator, schedule_horizon, seed_everything,
    start_run, trainable_parameters,
)
from framethink.engine.parameters import enable_activation_checkpointing
from framethink.models.adapter import EncodedPrompt
from framethink.models.base import CACHE_ARGUMENT, FrozenTowerCache, Prefill
from framethink.models.qwen_vl.adapter import QwenVLAdapter
from framethink.rl.step import RLRun, Rollout, rl_step
from framethink.rl.trainer import needs_reference


def limit_threads(threads: int = 1) -> None:
    """One intra-op thread: the machine is shared, and ratios taken side by side stay fair."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


CLOCK_NOTE = ("cpu = CPU seconds of the process (time.process_time): with one thread it is the work done, unaffected "
              "by other jobs waiting for the shared cores; wall = time.perf_counter")


def stats(seconds: list[float]) -> dict[str, float]:
    """min / median / max of repeated timings."""
    return {"min": min(seconds), "median": statistics.median(seconds), "max": max(seconds), "n": len(seconds)}


def timed(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def print_result(name: str, result: dict) -> None:
    """The JSON line BENCHMARKS.md quotes, after a marker line."""
    print(f"== {name}")
    print(json.dumps(result, indent=1, default=float))


# ---------------------------------------------------------------------------- data
def write_image_records(out: Path, n: int, *, size: int = 112, seed: int = 0) -> Path:
    """`n` random-noise PNG images of `size` x `size` and multiple-choice Video-R1 records  about them."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out / f"{i}.png")
        rows.append({"problem_id": i, "problem": "Which colour covers most of the picture?", "data_type": "image",
                     "problem_type": "multiple choice", "options": ["A. red", "B. green", "C. blue", "D. grey"],
                     "solution": "<answer>D</answer>", "path": f"{i}.png"})
    (out / "train.json").write_text(json.dumps(rows))
    return out / "train.json"


def write_video_records(out: Path, n: int, *, num_frames: int, size: int, seed: int = 0) -> Path:
    """`n` synthetic temporal clips ("which colour came first", `num_frames` frames at 2 fps, `size` px)."""
    write_synthetic_dataset(out, n_train=n, n_test=0, seed=seed, num_frames=num_frames, size=size,
                            tasks=["color_first"])
    return out / "train.json"


def write_clip(path: Path, *, width: int, height: int, seconds: float, fps: int, gop: int, seed: int = 0) -> Path:
    """A lossy H.264 clip (yuv420p, a keyframe every `gop` frames): a drifting colour gradient with noise, so that
    the codec has real work."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)  # [H, W] each
    total = round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = width, height, "yuv420p", gop
        for t in range(total):
            phase = t / total
            rgb = np.stack([(xs + phase) % 1, (ys + 2 * phase) % 1, (xs * ys + phase) % 1], -1) * 200  # [H, W, 3]
            rgb = (rgb + rng.integers(0, 40, rgb.shape)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rl_config(model_dir: Path, train_file: Path, *overrides: str) -> TrainConfig:
    """A recipe for benchmark steps: no logging, no checkpoints; `overrides` are `key=value` strings."""
    base = [f"model.path={model_dir}", f"data.train_file={train_file}", f"run.out={train_file.parent / 'run'}",
            "run.report_to=[none]",
            "run.save_every=0", "run.sample_every=0", "rl.top_p=1.0"]
    return load_config(None, [*base, *overrides])


# ---------------------------------------------------------------------------- fast paths turned off
def convert(adapter: QwenVLAdapter, cls: type[QwenVLAdapter], *, tower_reuse: bool = True) -> QwenVLAdapter:
    """The same adapter (model, tokenizer, processor, frame cache) as an instance of `cls` (the adapter's own class,
    or `PerRowAdapter`), with a frozen-tower cache of its own: empty, or off unless `tower_reuse`."""
    out = cls.__new__(cls)
    out.__dict__.update(adapter.__dict__)
    out.tower_cache = FrozenTowerCache(adapter.tower_cache.size if tower_reuse else 0)
    return out


class PerRowAdapter(QwenVLAdapter):
    """framethink's adapter with prefix sharing turned off (its path before prefix sharing became the default):
    every row carries its whole prompt through the LM, in the generation prefill and in every log-prob forward.
    The vision encoder still runs once per prompt batch."""

    def _prefill(self, model: PreTrainedModel, prompts: list[EncodedPrompt], row_prompt: list[int],
                 cache: DynamicCache) -> Prefill:
        packed = self.pack(model, prompts, row_prompt)  # [N, Lp]: one row per completion
        logits = self._forward(model, packed, **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1)
        return Prefill(logits=logits[:, -1], attention_mask=packed.attention_mask,
                       last_positions=packed.last_positions())

    def completion_logprobs(self, prompts: list[EncodedPrompt], row_prompt: list[int], completion_ids: torch.Tensor,
                            *, model: PreTrainedModel | None = None) -> torch.Tensor:
        return self._completion_logprobs_per_row(model or self.model, prompts, row_prompt, completion_ids)


# ---------------------------------------------------------------------------- one framethink step
@dataclass
class StepTimes:
    """Seconds spent in each phase of one RL step (`rl_step`'s own phase times)."""

    generate: float  # adapter.generate: prefill + sampling of every row (ordered and shuffled)
    rollout: float  # sampling in all: encode + generate + rewards
    reference: float  # advantages, reference (and old-policy) log-probs
    update: float  # policy forward, loss, backward, optimiser step
    vision_calls: int  # vision-encoder calls during the step (policy and reference model)
    vision_clips: int  # images / clips those calls encoded
    rows: int  # completions sampled, ordered + shuffled
    completion_tokens: int  # sampled tokens of all rows, up to EOS
    cpu: float  # CPU seconds of the process over the whole step (see `clock`)

    @property
    def total(self) -> float:
        return self.rollout + self.reference + self.update


@dataclass
class FramethinkRun(RLRun):
    """The run `train_rl` steps (the engine's `TrainingRun`: adapter, optimiser, schedule, RNG, reference model;
    and the records), stepped by `rl_step` with its phases timed."""

    last_rollout: Rollout | None = None

    @classmethod
    def build(cls, config: TrainConfig, adapter_cls: type | None = None, *, tower_reuse: bool = True) -> FramethinkRun:
        """The state `train_rl` starts from; `adapter_cls` swaps in another adapter class (`PerRowAdapter`), and
        `tower_reuse=False` turns frozen-tower reuse off."""
        seed_everything(config.run.seed)
        records = load_records(config.data.train_file, root=config.data.root)
        state = start_run(config, make_accelerator(config), resume=False, reference=needs_reference(config),
                          num_records=len(records))
        if adapter_cls is not None or not tower_reuse:
            state.adapter = convert(state.adapter, adapter_cls or type(state.adapter), tower_reuse=tower_reuse)
        return cls(state, records)

    @classmethod
    def from_adapter(cls, config: TrainConfig, adapter, records: list[Record], out: Path) -> FramethinkRun:
        """The same state around an adapter built in memory (a randomly initialised real-size model); the reference
        is a frozen copy of it, as `start_run` makes one."""
        reference = copy.deepcopy(adapter.model).eval().requires_grad_(False) if needs_reference(config) else None
        if config.model.gradient_checkpointing:
            enable_activation_checkpointing(adapter.model)
        params, lora = trainable_parameters(adapter, config)
        optimizer = build_optimizer(params, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, schedule_horizon(config, len(records), 1))
        state = TrainingRun(
            config=config, accelerator=make_accelerator(config), out=out, adapter=adapter, params=params, lora=lora,
            optimizer=optimizer, scheduler=scheduler, generator=torch.Generator().manual_seed(config.run.seed),
            start_step=0, logger=RunLogger(out, ["none"], enabled=False), reference=reference,
        )
        return cls(state, records)

    @property
    def ref_model(self) -> torch.nn.Module | None:
        return self.engine.reference

    def batch(self, step: int) -> list[Record]:
        """The step's records in the trainer's data order."""
        return [self.records[i] for i in self.engine.batch_indices(step, len(self.records))]

    def step(self, step: int) -> StepTimes:
        """One step as `train_rl` runs it: `rl_step`, with the vision calls and the generation counted."""
        adapter = self.adapter
        with count_vision_calls(adapter.model, self.ref_model) as calls, time_method(adapter, "generate") as gen:
            c0 = time.process_time()
            result = rl_step(self, self.batch(step), step)
            c1 = time.process_time()
        self.last_rollout = result.rollout
        m = result.metrics
        return StepTimes(generate=gen[0], rollout=m["time/rollout"], reference=m["time/reference"],
                         update=m["time/update"], vision_calls=calls[0], vision_clips=calls[1], rows=gen[1],
                         completion_tokens=gen[2], cpu=c1 - c0)


@contextmanager
def count_vision_calls(*models: torch.nn.Module | None) -> Iterator[list[int]]:
    """Counts forward calls of each model's vision encoder (`model.model.visual`) while inside, and the images or
    clips they encoded (rows of `grid_thw`): `[calls, clips]`."""
    count = [0, 0]

    def hook(module, args, kwargs) -> None:
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        count[0] += 1
        count[1] += grid.shape[0]

    hooks = [m.model.visual.register_forward_pre_hook(hook, with_kwargs=True) for m in models if m is not None]
    try:
        yield count
    finally:
        for handle in hooks:
            handle.remove()


@contextmanager
def time_method(adapter, name: str) -> Iterator[list]:
    """Wraps `adapter.<name>` (a generate method) while inside: `[seconds, rows, tokens]` summed over calls."""
    original = getattr(adapter, name)
    acc = [0.0, 0, 0]

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        acc[0] += time.perf_counter() - t0
        acc[1] += out.tokens.shape[0]
        acc[2] += int(out.mask.sum().item())
        return out

    setattr(adapter, name, wrapper)
    try:
        yield acc
    finally:
        delattr(adapter, name)  # the instance attribute goes; the class method shows through again
