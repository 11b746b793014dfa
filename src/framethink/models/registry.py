"""The model-family registry: config.json `model_type` -> the family that loads, builds and trains it.

Each family lives in its own folder under `framethink.models` and is registered here by one entry in `FAMILIES`
(docs/models.md, "Adding a family"). No other module names a model type: loading a checkpoint, building a tiny one
(`framethink model tiny --arch`), the LoRA default targets and the settings a family accepts all go through here.

A model exported by framethink also carries `framethink.json`: the prompt template, system message and frame rule it
was trained with, so that evaluation uses them by default (a model trained on a template is evaluated with it).
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from framethink.data.clips import FrameRule
from framethink.errors import ConfigError
from framethink.models.base import Family
from framethink.models.qwen3_vl.family import FAMILY as QWEN3_VL
from framethink.models.qwen_vl.family import FAMILY as QWEN_VL
from framethink.models.tinyllava.family import FAMILY as TINYLLAVA

FAMILIES: tuple[Family, ...] = (QWEN_VL, QWEN3_VL, TINYLLAVA)
TRAINING_FILE = "framethink.json"


def _index(key: str) -> dict[str, Family]:
    table: dict[str, Family] = {}
    for family in FAMILIES:
        for name in getattr(family, key):
            if name in table:
                raise RuntimeError(f"{key} {name!r} is registered by both {table[name].name} and {family.name}")
            table[name] = family
    return table


BY_MODEL_TYPE = _index("model_types")
BY_TINY_ARCH = _index("tiny_archs")


def family_of(model_type: str, where: str | Path = "") -> Family:
    """The family of a config.json `model_type`; ConfigError naming `where` and the known types if none."""
    if model_type not in BY_MODEL_TYPE:
        raise ConfigError(f"{where}: model_type {model_type!r} is not supported (known: {', '.join(BY_MODEL_TYPE)})")
    return BY_MODEL_TYPE[model_type]


def tiny_archs() -> list[str]:
    """Every `framethink model tiny --arch` name, family by family."""
    return list(BY_TINY_ARCH)


def build_tiny(arch: str, out: str | Path, *, seed: int = 0, **size_overrides: int) -> Path:
    """Write a randomly initialised tiny checkpoint of `arch` (one of `tiny_archs()`) into `out`; returns `out`.
    `size_overrides` are the family's tiny sizes (e.g. Qwen-VL's `hidden_size=64`); the same seed gives the same
    weights."""
    if arch not in BY_TINY_ARCH:
        raise ConfigError(f"unknown tiny architecture '{arch}'; known: {', '.join(BY_TINY_ARCH)}")
    return BY_TINY_ARCH[arch].build_tiny(arch, Path(out), seed=seed, **size_overrides)


def lora_targets(model: torch.nn.Module) -> list[str] | str:
    """What LoRA adapts in `model` when a recipe names no modules: its family's targets."""
    return family_of(model.config.model_type, type(model).__name__).lora_targets


def default_frames(path: str | Path) -> FrameRule:
    """The frame rule of the checkpoint at `path` when nothing else sets one: what its own processor configs say
    where its family reads them (Qwen3-VL's video processor: fps, min and max frames), else its family's default."""
    family = family_of(checkpoint_type(path), path)
    return family.checkpoint_frames(Path(path)) if family.checkpoint_frames else family.default_frames


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
    """The adapter for the checkpoint at `path`, from the family its config.json `model_type` names.

    Unset arguments fall back to what the checkpoint says: its `framethink.json` (template, system, frame rule)
    and its processor configs (pixel bounds; Qwen3-VL's sampling settings), then to the family's defaults (Qwen-VL:
    the fps rule; TinyLLaVA-Video: 16 uniform frames). `num_frames` caps the frames per clip (evaluation's --frames);
    `max_pixels` (the recipe's `video_max_pixels`) bounds each video frame. A pixel bound the family does not read
    (TinyLLaVA-Video resizes every frame to its SigLIP size) is refused with ConfigError naming the setting.
    """
    trained = read_training_settings(path)
    model_type = checkpoint_type(path)
    family = family_of(model_type, path)
    frames = frames or trained.get("frames") or default_frames(path)
    if num_frames is not None:
        frames = replace(frames, max_frames=num_frames, num_frames=num_frames)
    system = system if system is not None else trained.get("system")
    pixels = {key: value for key, value in (("video_max_pixels", max_pixels), ("video_min_pixels", video_min_pixels),
                                            ("image_max_pixels", image_max_pixels),
                                            ("image_min_pixels", image_min_pixels)) if value is not None}
    if refused := [key for key in pixels if key not in family.pixel_settings]:
        settings = ", ".join(f"{key}={pixels[key]}" for key in refused)
        known = ", ".join(family.pixel_settings) or "none"
        raise ConfigError(f"{path}: {settings} does not apply to {family.name} (model_type {model_type!r}; "
                          f"pixel settings it reads: {known}); remove it")
    adapter = family.load(path, frames=frames, pixels=pixels, dtype=dtype, device=device, system=system,
                          frame_cache_size=frame_cache_size)
    if template is not None or "template" in trained:
        adapter.default_template = template or trained["template"]
    return adapter
