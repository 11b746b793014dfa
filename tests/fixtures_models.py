"""Shared pytest fixtures: tiny offline Qwen-VL checkpoints and the offline tokenizer.

Checkpoint directories are built once per test run (read-only by convention: copy before modifying);
models are loaded per test so a test may train its own copy.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from framethink.models.qwen_vl.loader import load_qwen_vl
from framethink.models.qwen_vl.inputs import QwenVisionProcessor
from framethink.models.tiny import build_tiny
from framethink.models.tokenizer import build_offline_tokenizer

# ~0.28 M parameters (docs/models.md#tiny-checkpoints): text hidden 64, 2 layers, 4 heads / 2 KV heads,
# mrope_section [2, 3, 3]; vision hidden 32, depth 2.
SMALL_SIZES = dict(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    vision_hidden_size=32,
    vision_num_heads=2,
    vision_intermediate_size=128,
)


@pytest.fixture(scope="session")
def offline_tokenizer() -> PreTrainedTokenizerFast:
    """The default offline Qwen-style tokenizer (vocab 768 + 18 added tokens)."""
    return build_offline_tokenizer()


@pytest.fixture(scope="session")
def tiny_qwen25_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Qwen2.5-VL checkpoint directory (SMALL_SIZES, seed 0)."""
    return build_tiny("qwen2.5-vl", tmp_path_factory.mktemp("tiny_qwen25_vl"), seed=0, **SMALL_SIZES)


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Qwen2-VL checkpoint directory (SMALL_SIZES, seed 0)."""
    return build_tiny("qwen2-vl", tmp_path_factory.mktemp("tiny_qwen2_vl"), seed=0, **SMALL_SIZES)


@pytest.fixture
def tiny_qwen25_vl(tiny_qwen25_vl_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, QwenVisionProcessor]:
    """(model, tokenizer, processor) freshly loaded from `tiny_qwen25_vl_dir` for each test."""
    return load_qwen_vl(tiny_qwen25_vl_dir)
