"""Tiny randomly initialised Qwen2-VL / Qwen2.5-VL checkpoints, built offline.

A tiny checkpoint has a real one's directory layout (config.json with the real model_type and
architectures, model.safetensors, generation_config.json, tokenizer files with the chat template,
preprocessor_config.json and video_preprocessor_config.json), so every code path that loads a real
checkpoint loads it too. The default sizes are the learnable demo model (docs/models.md): text hidden 128,
4 layers, 4 heads / 2 KV heads, FFN 512; vision hidden 64, depth 2; ~1.5 M parameters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from framethink.errors import ConfigError
from framethink.models.qwen_vl.inputs import QwenVisionProcessor
from framethink.models.tokenizer import build_offline_tokenizer

TINY_ARCHS = ("qwen2.5-vl", "qwen2-vl")
# Pixel budgets for 56x56 clips: a 56x56 frame (= 4*28*28 pixels) keeps its size; images may reach 112x112,
# video frames stay at 4*28*28 pixels (4 merged tokens per 2-frame tubelet).
TINY_IMAGE_PIXELS = (4 * 28 * 28, 16 * 28 * 28)
TINY_VIDEO_PIXELS = (4 * 28 * 28, 4 * 28 * 28)


@dataclass(frozen=True)
class TinySizes:
    """Sizes of a tiny checkpoint; any field can be overridden through `build_tiny(**size_overrides)`."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_num_heads: int = 4
    vision_intermediate_size: int = 256
    tokenizer_vocab_size: int = 768  # BPE tokens before Qwen's special tokens
    vocab_multiple: int = 64  # the embedding is padded past the tokenizer like Qwen's (151,665 -> 151,936)
    rope_theta: float = 1_000_000.0
    tokens_per_second: int = 2  # Qwen2.5-VL: temporal positions per second of video


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (time, height, width) in Qwen's 2:3:3 proportion
    ([16, 24, 24] for head_dim 128; [2, 3, 3] for head_dim 16)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_tiny_qwen_vl(arch: str, out: Path, *, seed: int = 0, **size_overrides: Any) -> Path:
    """Write a randomly initialised tiny `arch` checkpoint ("qwen2.5-vl" or "qwen2-vl") into `out`.

    `size_overrides` are `TinySizes` fields, e.g. `hidden_size=64, num_hidden_layers=2,
    intermediate_size=128, vision_hidden_size=32` for a ~0.2 M-parameter model. The same seed gives the same
    weights. Returns `out`.
    """
    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown tiny Qwen-VL architecture '{arch}'; known: {', '.join(TINY_ARCHS)}")
    known = {f.name for f in fields(TinySizes)}
    if unknown := sorted(set(size_overrides) - known):
        raise ConfigError(f"unknown tiny size override(s) {unknown}; known: {sorted(known)}")
    sizes = replace(TinySizes(), **size_overrides)
    head_dim = sizes.hidden_size // sizes.num_attention_heads
    if sizes.hidden_size % sizes.num_attention_heads or head_dim % 8:
        # head_dim/2 rotary frequencies are split 2:3:3 over (time, height, width); none may be empty
        raise ConfigError(f"tiny sizes {asdict(sizes)}: head_dim = hidden_size / num_attention_heads must divide by 8")

    tokenizer = build_offline_tokenizer(vocab_size=sizes.tokenizer_vocab_size)
    eos, pad, image, video, vision_start, vision_end = tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    )
    vocab_size = -(-len(tokenizer) // sizes.vocab_multiple) * sizes.vocab_multiple
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": sizes.hidden_size,
        "intermediate_size": sizes.intermediate_size,
        "num_hidden_layers": sizes.num_hidden_layers,
        "num_attention_heads": sizes.num_attention_heads,
        "num_key_value_heads": sizes.num_key_value_heads,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": sizes.rope_theta,
            "mrope_section": mrope_section(head_dim),
        },
        "bos_token_id": pad,  # Qwen's configs name <|endoftext|> as bos although the tokenizer adds none
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    vision_common = {
        "depth": sizes.vision_depth,
        "num_heads": sizes.vision_num_heads,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    token_ids = {
        "image_token_id": image,
        "video_token_id": video,
        "vision_start_token_id": vision_start,
        "vision_end_token_id": vision_end,
    }
    if arch == "qwen2.5-vl":
        vision_config = {
            **vision_common,
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": sizes.vision_intermediate_size,
            "out_hidden_size": sizes.hidden_size,
            "tokens_per_second": sizes.tokens_per_second,
            "window_size": 112,
            # one full-attention block every 8, ending with the last ([7, 15, 23, 31] for depth 32)
            "fullatt_block_indexes": list(range(sizes.vision_depth - 1, -1, -8))[::-1],
        }
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **token_ids)
        model_cls = Qwen2_5_VLForConditionalGeneration
    else:
        vision_config = {
            **vision_common,
            "embed_dim": sizes.vision_hidden_size,
            "mlp_ratio": sizes.vision_intermediate_size // sizes.vision_hidden_size,
            "hidden_size": sizes.hidden_size,
        }
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **token_ids)
        model_cls = Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = model_cls(config)
    # Sampling settings are left to framethink's decoding config; only the special ids are set.
    model.generation_config = GenerationConfig(
        bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad
    )
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    QwenVisionProcessor(
        image_min_pixels=TINY_IMAGE_PIXELS[0], image_max_pixels=TINY_IMAGE_PIXELS[1],
        video_min_pixels=TINY_VIDEO_PIXELS[0], video_max_pixels=TINY_VIDEO_PIXELS[1],
        absolute_time=arch == "qwen2.5-vl",
    ).save_pretrained(out)
    return out
