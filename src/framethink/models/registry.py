"""Load the policy adapter for any checkpoint framethink knows, chosen by its config.json."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from framethink.errors import ConfigError
from framethink.models.qwen_vl import FrameRule, load_qwen_vl_adapter

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl")


def checkpoint_type(path: str | Path) -> str:
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ConfigError(f"{path}: no config.json; not a model checkpoint directory")
    return json.loads(config.read_text()).get("model_type", "")


def load_adapter(
    path: str | Path,
    *,
    frames: FrameRule | None = None,
    video_max_pixels: int | None = None,
    video_min_pixels: int | None = None,
    image_max_pixels: int | None = None,
    image_min_pixels: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    system: str | None = None,
    frame_cache_size: int = 256,
):
    """The adapter for the checkpoint at `path`; pixel bounds left as None keep the checkpoint's own."""
    model_type = checkpoint_type(path)
    if model_type in QWEN_TYPES:
        overrides = {k: v for k, v in dict(video_max_pixels=video_max_pixels, video_min_pixels=video_min_pixels,
                                           image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels).items()
                     if v is not None}
        return load_qwen_vl_adapter(path, frames=frames or FrameRule(), vision_overrides=overrides, dtype=dtype,
                                    device=device, system=system, frame_cache_size=frame_cache_size)
    raise ConfigError(f"{path}: model_type {model_type!r} is not supported (known: {', '.join(QWEN_TYPES)})")
