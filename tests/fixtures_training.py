"""Shared fixtures of the training-engine tests: tiny data sets, the policy adapter and a recipe builder.

Everything is tiny: 4-frame 56x56 clips at 2 fps (Qwen rule: 4 frames, second_per_grid 1.0, so with
tokens_per_second 2 the video block has 2 temporal grids 2 positions apart, each 2x2 merged tokens), the
SMALL_SIZES Qwen2.5-VL checkpoint, 2 prompts per step, G = 4 (+2 shuffled), 6 new tokens.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framethink.config import TrainConfig, load_config
from framethink.data.records import Record, load_records
from framethink.data.synth import write_synthetic_dataset
from framethink.models.qwen_vl.adapter import QwenVLAdapter, load_qwen_vl_adapter

TINY_RL = (
    "rl.num_generations=4",
    "rl.num_shuffled=2",
    "rl.max_new_tokens=6",
    "rl.advantage_noise=0.1",  # a random model earns no reward: noise gives every step a gradient
    "optim.lr=0.001",
    "optim.weight_decay=0.0",  # parameters move only through gradients
    "optim.prompts_per_step=2",
    "run.max_steps=1",
    "run.save_every=0",
    "run.sample_every=0",
    "run.report_to=[none]",
)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 4-frame 56x56 synthetic clips (a temporal item and the control item), each with a CoT `process`."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, n_train=1, n_test=0, seed=0, num_frames=4, size=56, tasks=["color_first", "color"])
    return out


@pytest.fixture(scope="session")
def synth_records(synth_dir: Path) -> list[Record]:
    return load_records(synth_dir / "train.json")


@pytest.fixture(scope="session")
def mixed_file(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path) -> Path:
    """A Video-R1 JSON file of a video, an image and a text-only record, in that order."""
    out = tmp_path_factory.mktemp("mixed")
    pixels = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out / "image.png")
    question = {"problem_type": "multiple choice", "options": ["A. yes", "B. no"], "solution": "<answer>B</answer>"}
    rows = [
        {"problem_id": 0, "problem": "Is it red?", "data_type": "video", "path": str(synth_dir / "videos/train/0.mp4"),
         **question},
        {"problem_id": 1, "problem": "Is it noisy?", "data_type": "image", "path": "image.png", **question},
        {"problem_id": 2, "problem": "Is two even?", "data_type": "text", **question},
    ]
    (out / "mixed.json").write_text(json.dumps(rows))
    return out / "mixed.json"


@pytest.fixture(scope="session")
def mixed_records(mixed_file: Path) -> list[Record]:
    return load_records(mixed_file)


@pytest.fixture
def adapter(tiny_qwen25_vl_dir: Path) -> QwenVLAdapter:
    """A freshly loaded adapter over the tiny Qwen2.5-VL checkpoint (a test may train it)."""
    return load_qwen_vl_adapter(tiny_qwen25_vl_dir)


@pytest.fixture
def recipe(tiny_qwen25_vl_dir: Path, synth_dir: Path, tmp_path: Path) -> Callable[..., TrainConfig]:
    """Builds the tiny recipe (TINY_RL on the synthetic clips and the tiny Qwen2.5-VL, writing to
    tmp_path/`run`), then applies `key=value` overrides: `recipe("rl.beta=0", run="a")`."""

    def build(*overrides: str, run: str = "run") -> TrainConfig:
        train = synth_dir / "train.json"
        base = [f"model.path={tiny_qwen25_vl_dir}", f"data.train_file={train}", f"sft.train_file={train}",
                f"run.out={tmp_path / run}"]
        return load_config(None, [*base, *TINY_RL, *overrides])

    return build
