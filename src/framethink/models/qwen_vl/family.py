"""The Qwen2-VL / Qwen2.5-VL family's registry entry (docs/models.md)."""
from __future__ import annotations

from pathlib import Path

import torch

from framethink.data.clips import FrameRule
from framethink.models.base import Family
from framethink.models.qwen_vl.adapter import QWEN_FRAMES, QwenVLAdapter, load_qwen_vl_adapter
from framethink.models.qwen_vl.loader import QWEN_VL_MODEL_CLASSES
from framethink.models.qwen_vl.tiny import TINY_ARCHS, build_tiny_qwen_vl

PIXEL_SETTINGS = ("video_max_pixels", "video_min_pixels", "image_max_pixels", "image_min_pixels")


def load(path: str | Path, *, frames: FrameRule, pixels: dict[str, int], dtype: torch.dtype, device: str,
         system: str | None, frame_cache_size: int) -> QwenVLAdapter:
    """The adapter with the checkpoint's processor configs, `pixels` (smart-resize bounds) overriding them."""
    return load_qwen_vl_adapter(path, frames=frames, vision_overrides=pixels, dtype=dtype, device=device,
                                system=system, frame_cache_size=frame_cache_size)


FAMILY = Family(
    name="Qwen2-VL / Qwen2.5-VL",
    model_types=tuple(QWEN_VL_MODEL_CLASSES),
    tiny_archs=TINY_ARCHS,
    load=load,
    build_tiny=build_tiny_qwen_vl,
    default_frames=QWEN_FRAMES,
    pixel_settings=PIXEL_SETTINGS,
    lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"],  # the LM's attention (the tower's is `qkv`)
)
