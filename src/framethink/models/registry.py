"""Load the policy adapter for any checkpoint framethink knows, chosen by its config.json `model_type`:
Qwen2-VL / Qwen2.5-VL, or TinyLLaVA-Video in framethink's layout or the released one.

A model exported by framethink also carries `framethink.json`: the prompt template, system message and
frame rule it was trained with, so that evaluation uses them by default (SPEC 3: a model trained on a
template must be evaluated with it).
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from framethink.errors import ConfigError
from framethink.data.clips import FrameRule
from framethink.models.qwen_vl import load_qwen_vl_adapter
from framethink.models.tinyllava import TinyLlavaVideoConfig
from framethink.models.tinyllava_adapter import TINYLLAVA_FRAMES, load_tinyllava_adapter
from framethink.models.tinyllava_convert import RELEASED_MODEL_TYPE

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl")
TINYLLAVA_TYPES = (TinyLlavaVideoConfig.model_type, RELEASED_MODEL_TYPE)
TRAINING_FILE = "framethink.json"


def checkpoint_type(path: str | Path) -> str:
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ConfigError(f"{path}: no config.json; not a model checkpoint directory")
    return json.loads(config.read_text()).get("model_type", "")


def write_training_settings(out: Path, *, template: str, system: str | None, frames: FrameRule) -> None:
    """Record how a model was trained next to its weights."""
    (Path(out) / TRAINING_FILE).write_text(json.dumps({"template": template, "system": system, "frames": asdict(frames)}, indent=1))


def read_training_settings(path: str | Path) -> dict:
    file = Path(path) / TRAINING_FILE
    if not file.is_file():
        return {}
    data = json.loads(file.read_text())
    known = {f.name for f in fields(FrameRule)}
    if "frames" in data:
        unknown = set(data["frames"]) - known
        if unknown:
            raise ConfigError(f"{file}: unknown frame-rule keys {sorted(unknown)}")
        data["frames"] = FrameRule(**data["frames"])
    return data


def load_adapter(
    path: str | Path,
    *,
    frames: FrameRule | None = None,
    num_frames: int | None = None,
    max_pixels: int | None = None,
    video_min_pixels: int | None = None,
    image_max_pixels: int | None = None,
    image_min_pixels: int | None = None,
    template: str | None = None,
    system: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    frame_cache_size: int = 256,
):
    """The adapter for the checkpoint at `path`.

    Unset arguments fall back to what the checkpoint says: its `framethink.json` (template, system, frame rule)
    and its processor configs (pixel bounds), then to the model type's defaults (Qwen-VL: the fps rule;
    TinyLLaVA-Video: 16 uniform frames). `num_frames` caps the frames per clip (evaluation's --frames);
    `max_pixels` bounds each video frame. The pixel bounds are Qwen-VL's smart resize (SPEC 2.2):
    TinyLLaVA-Video always resizes frames to its SigLIP image size (SPEC 2.3).
    """
    trained = read_training_settings(path)
    model_type = checkpoint_type(path)
    frames = frames or trained.get("frames") or (TINYLLAVA_FRAMES if model_type in TINYLLAVA_TYPES else FrameRule())
    if num_frames is not None:
        frames = replace(frames, max_frames=num_frames, num_frames=num_frames)
    system = system if system is not None else trained.get("system")
    if model_type in TINYLLAVA_TYPES:
        adapter = load_tinyllava_adapter(
            path, frames=frames, dtype=dtype, device=device, system=system, frame_cache_size=frame_cache_size,
        )
    elif model_type in QWEN_TYPES:
        bounds = dict(video_max_pixels=max_pixels, video_min_pixels=video_min_pixels,
                      image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels)
        adapter = load_qwen_vl_adapter(
            path, frames=frames, vision_overrides={k: v for k, v in bounds.items() if v is not None}, dtype=dtype,
            device=device, system=system, frame_cache_size=frame_cache_size,
        )
    else:
        known = ", ".join(QWEN_TYPES + TINYLLAVA_TYPES)
        raise ConfigError(f"{path}: model_type {model_type!r} is not supported (known: {known})")
    if template is not None or "template" in trained:
        adapter.default_template = template or trained["template"]
    return adapter
