"""Tiny randomly initialised Qwen3-VL and Qwen3.5 checkpoints, built offline (`framethink model tiny --arch`).

A tiny checkpoint has a released one's directory layout: config.json with the real model_type and architectures
(`Qwen3VLForConditionalGeneration`, `Qwen3_5ForConditionalGeneration`), model.safetensors, generation_config.json,
a tokenizer with Qwen's special tokens (Qwen3's tool-call and thinking tokens included) and the family's chat
template, preprocessor_config.json and video_preprocessor_config.json, so that transformers' `AutoProcessor` and
`AutoModelForImageTextToText` load it like a released checkpoint.

The chat templates are the released ones, byte for byte (package files next to this module):
`chat_template_qwen3_vl.jinja` is Qwen/Qwen3-VL-*-Instruct's (5,292 bytes, sha256 3636d0f0...a489e4) and
`chat_template_qwen3_5.jinja` is Qwen/Qwen3.5's (7,756 bytes, sha256 a4aee8af...c28f715; its generation prompt opens
`<think>\\n`). Qwen3.5 checkpoints name `Qwen2Tokenizer` in tokenizer_config.json while transformers loads them with
`Qwen3_5Tokenizer` (another pre-tokenizer regex); the tiny tokenizer is trained with that regex.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as QWEN3_5_PRETOKENIZE_REGEX
from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

from framethink.errors import ConfigError
from framethink.models.qwen3_vl.inputs import Qwen3VisionProcessor
from framethink.models.tokenizer import build_offline_tokenizer

TINY_ARCHS = ("qwen3-vl", "qwen3.5")
# Qwen3's ordinary added tokens after the vision ones (151657 ... 151668 in the real vocabulary).
QWEN3_ADDED_TOKENS = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)
# Released interleaved M-RoPE splits of the rotary frequencies over (time, height, width).
QWEN3_VL_MROPE_SECTION = (24, 20, 20)  # Qwen3-VL, head_dim 128
QWEN3_5_MROPE_SECTION = (11, 11, 10)  # Qwen3.5, 64 rotary dims of head_dim 256 (partial_rotary_factor 0.25)
# Pixel budgets of the tiny processors, for the demo's small clips: images 64x64 .. 128x128 pixels; a video clip at
# least one 64x64 frame pair and at most 32 frames of 64x64 (4 merged tokens per temporal patch) in all.
TINY_IMAGE_PIXELS = (64 * 64, 128 * 128)
TINY_VIDEO_PIXELS = (2 * 64 * 64, 32 * 64 * 64)


@dataclass(frozen=True)
class Qwen3TinySizes:
    """Sizes of a tiny Qwen3-VL / Qwen3.5 checkpoint; any field can be overridden through the builder.

    The linear-attention fields and `full_attention_interval` (every n-th layer is full attention, the others
    Gated DeltaNet) are Qwen3.5's; `deepstack_layers` (how many vision blocks' features DeepStack adds to the first LM
    layers) is Qwen3-VL's (Qwen3.5 has none)."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    vision_hidden_size: int = 64
    vision_depth: int = 3
    vision_num_heads: int = 4
    vision_intermediate_size: int = 256
    num_position_embeddings: int = 64  # a square: the tower interpolates an 8 x 8 grid of position embeddings
    deepstack_layers: int = 2
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    linear_conv_kernel_dim: int = 4
    full_attention_interval: int = 4
    tokenizer_vocab_size: int = 768  # BPE tokens before Qwen's special tokens
    vocab_multiple: int = 64  # the embedding is padded past the tokenizer, as Qwen's is


def scaled_mrope_section(released: tuple[int, ...], rotary_half: int) -> list[int]:
    """The released (time, height, width) split scaled to `rotary_half` frequencies: floors, then the remainder
    one by one from the first axis ((24, 20, 20) -> [6, 5, 5] for 16; (11, 11, 10) -> [3, 3, 2] for 8)."""
    total = sum(released)
    section = [part * rotary_half // total for part in released]
    for axis in range(rotary_half - sum(section)):
        section[axis] += 1
    if min(section) < 1:
        raise ConfigError(f"{rotary_half} rotary frequencies cannot be split over time, height and width")
    return section


def chat_template(arch: str) -> str:
    """The released chat template of `arch` ("qwen3-vl" or "qwen3.5")."""
    name = {"qwen3-vl": "chat_template_qwen3_vl.jinja", "qwen3.5": "chat_template_qwen3_5.jinja"}[arch]
    return resources.files(__package__).joinpath(name).read_text()


def build_tiny_tokenizer(arch: str, vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """The offline tokenizer of a tiny `arch` checkpoint: Qwen's special tokens in Qwen's order, Qwen3's added
    tokens, the family's chat template; for Qwen3.5 the `Qwen3_5Tokenizer` pre-tokenizer."""
    family = ({"tokenizer_class": Qwen3_5Tokenizer, "pretokenize_regex": QWEN3_5_PRETOKENIZE_REGEX}
              if arch == "qwen3.5" else {})
    return build_offline_tokenizer(
        vocab_size=vocab_size, chat_template=chat_template(arch), added_tokens=QWEN3_ADDED_TOKENS, **family
    )


def build_tiny_qwen3(arch: str, out: Path, *, seed: int = 0, **size_overrides: Any) -> Path:
    """Write a randomly initialised tiny `arch` checkpoint ("qwen3-vl" or "qwen3.5") into `out`; returns `out`.

    `size_overrides` are `Qwen3TinySizes` fields. The same seed gives the same weights. The processor configs
    carry `TINY_IMAGE_PIXELS` / `TINY_VIDEO_PIXELS` and the video processor's default sampling (2 fps, 4 .. 768
    frames).
    """
    if arch not in TINY_ARCHS:
        raise ConfigError(f"unknown tiny Qwen3 architecture '{arch}'; known: {', '.join(TINY_ARCHS)}")
    known = {f.name for f in fields(Qwen3TinySizes)}
    if unknown := sorted(set(size_overrides) - known):
        raise ConfigError(f"unknown tiny size override(s) {unknown}; known: {sorted(known)}")
    sizes = replace(Qwen3TinySizes(), **size_overrides)
    if sizes.deepstack_layers >= sizes.vision_depth or sizes.deepstack_layers > sizes.num_hidden_layers:
        raise ConfigError(f"tiny sizes {asdict(sizes)}: deepstack_layers must be below the vision depth and at most "
                          "the LM layers")

    tokenizer = build_tiny_tokenizer(arch, sizes.tokenizer_vocab_size)
    eos, pad, image, video, vision_start, vision_end = tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    )
    text_config = {
        "vocab_size": -(-len(tokenizer) // sizes.vocab_multiple) * sizes.vocab_multiple,
        "hidden_size": sizes.hidden_size,
        "intermediate_size": sizes.intermediate_size,
        "num_hidden_layers": sizes.num_hidden_layers,
        "num_attention_heads": sizes.num_attention_heads,
        "num_key_value_heads": sizes.num_key_value_heads,
        "head_dim": sizes.head_dim,
        "max_position_embeddings": 32768,
        "bos_token_id": pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    vision_config = {
        "depth": sizes.vision_depth,
        "hidden_size": sizes.vision_hidden_size,
        "intermediate_size": sizes.vision_intermediate_size,
        "num_heads": sizes.vision_num_heads,
        "out_hidden_size": sizes.hidden_size,
        "num_position_embeddings": sizes.num_position_embeddings,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    token_ids = {"image_token_id": image, "video_token_id": video,
                 "vision_start_token_id": vision_start, "vision_end_token_id": vision_end}
    if arch == "qwen3-vl":
        text_config["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 5_000_000.0, "mrope_interleaved": True,
            "mrope_section": scaled_mrope_section(QWEN3_VL_MROPE_SECTION, sizes.head_dim // 2),
        }
        # spaced as the released [8, 16, 24] of 27 blocks: step (depth - n) // n
        step = max(1, (sizes.vision_depth - sizes.deepstack_layers) // max(1, sizes.deepstack_layers))
        vision_config["deepstack_visual_indexes"] = [step * (i + 1) for i in range(sizes.deepstack_layers)]
        config = Qwen3VLConfig(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False,
                               **token_ids)
        model_cls = Qwen3VLForConditionalGeneration
    else:
        rotary_dims = sizes.head_dim // 4  # partial_rotary_factor 0.25, as released
        text_config["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 10_000_000.0, "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
            "mrope_section": scaled_mrope_section(QWEN3_5_MROPE_SECTION, rotary_dims // 2),
        }
        interval = sizes.full_attention_interval
        text_config.update(
            layer_types=["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                         for i in range(sizes.num_hidden_layers)],
            linear_num_key_heads=sizes.linear_num_key_heads, linear_num_value_heads=sizes.linear_num_value_heads,
            linear_key_head_dim=sizes.linear_key_head_dim, linear_value_head_dim=sizes.linear_value_head_dim,
            linear_conv_kernel_dim=sizes.linear_conv_kernel_dim, tie_word_embeddings=True,
        )
        vision_config["deepstack_visual_indexes"] = []
        config = Qwen3_5Config(text_config=text_config, vision_config=vision_config, tie_word_embeddings=True,
                               **token_ids)
        model_cls = Qwen3_5ForConditionalGeneration

    torch.manual_seed(seed)
    model = model_cls(config)
    # Sampling settings are left to framethink's decoding config; only the special ids are set.
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen3VisionProcessor(
        image_min_pixels=TINY_IMAGE_PIXELS[0], image_max_pixels=TINY_IMAGE_PIXELS[1],
        video_min_pixels=TINY_VIDEO_PIXELS[0], video_max_pixels=TINY_VIDEO_PIXELS[1],
    ).save_pretrained(out)
    return out
