"""The Qwen3-VL / Qwen3.5 family's registry entry (docs/models.md)."""
from __future__ import annotations

from pathlib import Path

import torch

from framethink.data.clips import FrameRule
from framethink.models.base import Family
from framethink.models.qwen3_vl.adapter import QWEN3_FRAMES, QWEN3_MODEL_CLASSES, Qwen3VLAdapter, load_qwen3_adapter
from framethink.models.qwen3_vl.inputs import Qwen3VisionProcessor
from framethink.models.qwen3_vl.tiny import TINY_ARCHS, build_tiny_qwen3

PIXEL_SETTINGS = ("video_max_pixels", "video_min_pixels", "image_max_pixels", "image_min_pixels")


def load(path: str | Path, *, frames: FrameRule, pixels: dict[str, int], dtype: torch.dtype, device: str,
         system: str | None, frame_cache_size: int) -> Qwen3VLAdapter:
    """The adapter with the checkpoint's processor configs, `pixels` overriding their bounds (a video's bounds count
    the pixels of the whole clip, as the Qwen3-VL video processor's `size` does)."""
    return load_qwen3_adapter(path, frames=frames, vision_overrides=pixels, dtype=dtype, device=device,
                              system=system, frame_cache_size=frame_cache_size)


def checkpoint_frames(path: Path) -> FrameRule:
    """The video processor's own sampling (`Qwen3VLVideoProcessor.sample_frames`: fps, min and max frames) as the
    checkpoint's video_preprocessor_config.json sets it."""
    processor = Qwen3VisionProcessor.from_pretrained(path)
    return FrameRule(rule=QWEN3_FRAMES.rule, fps=processor.fps, min_frames=processor.min_frames,
                     max_frames=processor.max_frames)


FAMILY = Family(
    name="Qwen3-VL / Qwen3.5",
    model_types=tuple(QWEN3_MODEL_CLASSES),
    tiny_archs=TINY_ARCHS,
    load=load,
    build_tiny=build_tiny_qwen3,
    default_frames=QWEN3_FRAMES,
    pixel_settings=PIXEL_SETTINGS,
    # the LM's attention, full (q/k/v/o_proj) and linear (Qwen3.5's Gated DeltaNet: in_proj_qkv, in_proj_z,
    # out_proj), matched by whole name so the tower's attention (`qkv`, `proj`) stays out
    lora_targets=r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|linear_attn\.(in_proj_qkv|in_proj_z|out_proj))",
    checkpoint_frames=checkpoint_frames,
)
