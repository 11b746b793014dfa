"""The TinyLLaVA-Video family's registry entry (docs/models.md)."""
from __future__ import annotations

from pathlib import Path

import torch

from framethink.data.clips import FrameRule
from framethink.errors import ConfigError
from framethink.models.base import Family
from framethink.models.tinyllava.adapter import TINYLLAVA_FRAMES, TinyLlavaAdapter, load_tinyllava_adapter
from framethink.models.tinyllava.convert import RELEASED_MODEL_TYPE, build_tiny_tinyllava
from framethink.models.tinyllava.modeling import TinyLlavaVideoConfig

TINY_ARCH = "tinyllava-video"


def load(path: str | Path, *, frames: FrameRule, pixels: dict[str, int], dtype: torch.dtype, device: str,
         system: str | None, frame_cache_size: int) -> TinyLlavaAdapter:
    """The adapter over either layout; every frame is resized square to the SigLIP size, so `pixels` is empty (the
    registry refuses pixel bounds for this family)."""
    return load_tinyllava_adapter(path, frames=frames, dtype=dtype, device=device, system=system,
                                  frame_cache_size=frame_cache_size)


def build_tiny(arch: str, out: Path, *, seed: int = 0, **size_overrides: int) -> Path:
    """The tiny TinyLLaVA-Video checkpoint (fixed sizes: `framethink.models.tinyllava.convert`)."""
    if arch != TINY_ARCH:
        raise ConfigError(f"unknown tiny TinyLLaVA-Video architecture '{arch}'; known: {TINY_ARCH}")
    if size_overrides:
        raise ConfigError(f"tiny {TINY_ARCH} has fixed sizes; got overrides {sorted(size_overrides)}")
    return build_tiny_tinyllava(out, seed=seed)


FAMILY = Family(
    name="TinyLLaVA-Video",
    model_types=(TinyLlavaVideoConfig.model_type, RELEASED_MODEL_TYPE),
    tiny_archs=(TINY_ARCH,),
    load=load,
    build_tiny=build_tiny,
    default_frames=TINYLLAVA_FRAMES,
    pixel_settings=(),
    # the LM's attention only: SigLIP's attention has q/k/v_proj too, and its tower stays frozen in every stage
    lora_targets=r"language_model\..*\.(q_proj|k_proj|v_proj|o_proj)",
)
