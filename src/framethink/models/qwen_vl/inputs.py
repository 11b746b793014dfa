"""Qwen2-VL / Qwen2.5-VL model inputs in plain torch (docs/models.md).

Reproduces transformers' `Qwen2VLImageProcessor`, `Qwen2VLVideoProcessor` and `Qwen2_5_VLProcessor`
bit-exactly without torchvision: smart resize, bicubic antialiased resize of the uint8 frames,
fused rescale + normalise, temporal padding by repeating the last frame, and patchify into rows of
`C * temporal_patch_size * patch * patch` values in Qwen's order.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from framethink.errors import ConfigError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
_BICUBIC = 3  # PIL's BICUBIC, the only resample Qwen-VL uses
MAX_RATIO = 200  # Qwen-VL refuses images more elongated than this


def smart_resize(
    height: int, width: int, *, factor: int = 28, min_pixels: int = 4 * 28 * 28, max_pixels: int = 16384 * 28 * 28
) -> tuple[int, int]:
    """Qwen2-VL's smart resize (docs/models.md, Qwen-VL), as transformers' `image_processing_qwen2_vl.smart_resize`:
    H and W become multiples of `factor` near the original aspect ratio with H*W in [min_pixels, max_pixels].
    """
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class QwenVisionProcessor:
    """Pixel preprocessing of Qwen2-VL and Qwen2.5-VL. Defaults are transformers' class defaults."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 28 * 28 * 1280
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 28 * 28 * 768
    # Qwen2.5-VL spaces temporal positions by seconds (`second_per_grid_ts` is a model input); Qwen2-VL
    # takes no such input and its generate() rejects it.
    absolute_time: bool = True

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> QwenVisionProcessor:
        """Read a checkpoint's own processor configs, as transformers does, then apply `overrides`
        (field names of this class, e.g. `video_max_pixels=128 * 28 * 28` for Video-R1 training).

        Image settings come from `processor_config.json["image_processor"]` or `preprocessor_config.json`;
        video settings from `processor_config.json["video_processor"]`, `video_preprocessor_config.json`,
        or else `preprocessor_config.json` (real Qwen2/2.5-VL checkpoints ship only that one).
        Pixel bounds are read from `min_pixels`/`max_pixels` or `size: {shortest_edge, longest_edge}`.
        `absolute_time` is off only when the directory's config.json says model_type "qwen2_vl".
        """
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path}: checkpoint directory does not exist")
        image_cfg, image_file = find_processor_config(path, "image_processor", ("preprocessor_config.json",))
        video_cfg, video_file = find_processor_config(
            path, "video_processor", ("video_preprocessor_config.json", "preprocessor_config.json")
        )
        image = parse_pixel_config(image_cfg, image_file, default_min=cls.image_min_pixels, default_max=cls.image_max_pixels)
        video = parse_pixel_config(video_cfg, video_file, default_min=cls.video_min_pixels, default_max=cls.video_max_pixels)
        shared = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "rescale_factor")
        for key in shared:
            if image[key] != video[key]:
                raise ConfigError(f"{video_file}: '{key}' = {video[key]} differs from {image[key]} in {image_file}")
        model_config = path / "config.json"  # absent in a processor-only directory
        model_type = read_json_object(model_config).get("model_type") if model_config.is_file() else None
        processor = cls(
            **{key: image[key] for key in shared},
            image_min_pixels=image["min_pixels"],
            image_max_pixels=image["max_pixels"],
            video_min_pixels=video["min_pixels"],
            video_max_pixels=video["max_pixels"],
            absolute_time=model_type != "qwen2_vl",
        )
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(overrides) - known):
            raise ConfigError(f"unknown vision processor override(s) {unknown}; known: {sorted(known)}")
        return replace(processor, **overrides)

    def save_pretrained(self, out: str | Path) -> None:
        """Write `preprocessor_config.json` as Qwen's released checkpoints do (min_pixels / max_pixels) and
        `video_preprocessor_config.json` as transformers 5 writes a video processor (size: shortest_edge /
        longest_edge), with this processor's values: the pixel bounds a model was trained with travel with it."""
        out = Path(out)
        shared = {
            "image_mean": list(self.image_mean), "image_std": list(self.image_std), "rescale_factor": self.rescale_factor,
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size, "merge_size": self.merge_size,
            "processor_class": "Qwen2_5_VLProcessor" if self.absolute_time else "Qwen2VLProcessor",
        }
        image = {**shared, "min_pixels": self.image_min_pixels, "max_pixels": self.image_max_pixels,
                 "image_processor_type": "Qwen2VLImageProcessor"}
        video = {**shared, "size": {"shortest_edge": self.video_min_pixels, "longest_edge": self.video_max_pixels},
                 "video_processor_type": "Qwen2VLVideoProcessor"}
        (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
        (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")

    def process_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [H, W, 3] uint8 -> (pixel_values [N_patches, C*Tp*P*P] float32, image_grid_thw [N, 3] long).
        Each image is one frame, repeated to fill the temporal patch (docs/models.md)."""
        rows, grids = [], []
        for i, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.ndim == 3):
                shape = getattr(image, "shape", type(image).__name__)
                raise ValueError(f"images[{i}]: expected a uint8 RGB array [H, W, 3], got {shape}")
            frames = as_frames(image[None], f"images[{i}]")  # [1, 3, H, W]
            pixels, grid = self._encode(frames, self.image_min_pixels, self.image_max_pixels)
            rows.append(pixels)
            grids.append(grid)
        if not rows:
            raise ValueError("process_images needs at least one image")
        return torch.cat(rows), torch.tensor(grids, dtype=torch.long)

    def process_video(self, frames: np.ndarray, fps: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Frames [T, H, W, 3] uint8 sampled at `fps` -> (pixel_values_videos [N_patches, C*Tp*P*P],
        video_grid_thw [1, 3], second_per_grid_ts). `fps` is the actual sampling rate: Qwen2.5-VL's
        temporal M-RoPE uses `second_per_grid_ts = temporal_patch_size / fps` (docs/models.md)."""
        if not fps > 0:
            raise ValueError(f"video fps must be positive, got {fps}")
        pixels, grid = self._encode(as_frames(frames, "video"), self.video_min_pixels, self.video_max_pixels)
        return pixels, torch.tensor([grid], dtype=torch.long), self.temporal_patch_size / fps

    def _encode(self, frames: torch.Tensor, min_pixels: int, max_pixels: int) -> tuple[torch.Tensor, list[int]]:
        """uint8 frames [T, C, H, W] -> (patches [gt*gh*gw, C*Tp*P*P], [gt, gh, gw])."""
        factor = self.patch_size * self.merge_size
        new_h, new_w = smart_resize(*frames.shape[2:], factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        return self.encode_frames(frames, new_h, new_w)

    def encode_frames(self, frames: torch.Tensor, new_h: int, new_w: int) -> tuple[torch.Tensor, list[int]]:
        """uint8 frames [T, C, H, W] resized to (new_h, new_w) (multiples of patch * merge), normalised, padded to the
        temporal patch and patchified -> (patches [gt*gh*gw, C*Tp*P*P], [gt, gh, gw]). Qwen3-VL's video processor
        chooses the size by its own rule and shares this pipeline."""
        t, c, h, w = frames.shape
        if (new_h, new_w) != (h, w):
            # Resize the uint8 tensor itself, as torchvision does on CPU: a float detour differs by a few grey levels.
            frames = F.interpolate(frames, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        # Fused rescale + normalise with the same float32 constants as transformers.
        mean = (torch.tensor(self.image_mean) * (1.0 / self.rescale_factor)).view(-1, 1, 1)
        std = (torch.tensor(self.image_std) * (1.0 / self.rescale_factor)).view(-1, 1, 1)
        x = frames.to(torch.float32).sub_(mean).div_(std)  # [T, C, H', W']
        if pad := -t % self.temporal_patch_size:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])  # repeat the last frame
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        gt, gh, gw = x.shape[0] // tp, new_h // p, new_w // p
        x = x.view(gt, tp, c, gh // m, m, p, gw // m, m, p)
        # -> [gt, gh/m, gw/m, m, m, C, Tp, P, P]: each merge window's m*m patches are contiguous rows.
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(gt * gh * gw, c * tp * p * p), [gt, gh, gw]


def build_qwen_inputs(
    tokenizer: PreTrainedTokenizerBase,
    processor: QwenVisionProcessor,
    messages: list[dict],
    *,
    images: list[np.ndarray] = (),
    videos: list[tuple[np.ndarray, float]] = (),
    add_generation_prompt: bool = True,
) -> dict[str, torch.Tensor]:
    """Render a Qwen-VL chat and return the forward's inputs, batch dim 1 (what `Qwen2_5_VLProcessor` gives).

    `messages` use Qwen's content lists (`{"type": "video"}`, `{"type": "image"}`, `{"type": "text", ...}`);
    `images` / `videos` (frames [T, H, W, 3] uint8, sampling fps) fill the placeholders in order.
    Returns input_ids, attention_mask and mm_token_type_ids [1, L] (0 text, 1 image, 2 video: without it
    transformers v5 silently falls back to 1-D positions), plus pixel_values / image_grid_thw and
    pixel_values_videos / video_grid_thw / second_per_grid_ts [n_videos] for the media present
    (second_per_grid_ts only when `processor.absolute_time`, i.e. for Qwen2.5-VL).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    check_placeholders(text, len(images), len(videos))
    out: dict[str, torch.Tensor] = {}
    merge = processor.merge_size**2
    image_tokens: list[int] = []
    video_tokens: list[int] = []
    if images:
        out["pixel_values"], out["image_grid_thw"] = processor.process_images(list(images))
        image_tokens = (out["image_grid_thw"].prod(-1) // merge).tolist()
    if videos:
        encoded = [processor.process_video(frames, fps) for frames, fps in videos]
        out["pixel_values_videos"] = torch.cat([pixels for pixels, _, _ in encoded])
        out["video_grid_thw"] = torch.cat([grid for _, grid, _ in encoded])
        if processor.absolute_time:
            out["second_per_grid_ts"] = torch.tensor([seconds for _, _, seconds in encoded], dtype=torch.float32)
        video_tokens = (out["video_grid_thw"].prod(-1) // merge).tolist()

    # Expand the i-th placeholder of each kind to its number of merged patches.
    counts = {IMAGE_TOKEN: iter(image_tokens), VIDEO_TOKEN: iter(video_tokens)}
    pattern = f"{re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)}"
    text = re.sub(pattern, lambda match: match.group() * next(counts[match.group()]), text)

    return {**tokenize_with_types(tokenizer, text), **out}


def check_placeholders(text: str, n_images: int, n_videos: int) -> None:
    """ValueError unless a rendered chat has one image / video placeholder per given image / video."""
    n_image_slots, n_video_slots = text.count(IMAGE_TOKEN), text.count(VIDEO_TOKEN)
    if n_image_slots != n_images or n_video_slots != n_videos:
        raise ValueError(
            f"the chat has {n_image_slots} image and {n_video_slots} video placeholders "
            f"but {n_images} images and {n_videos} videos were given"
        )


def tokenize_with_types(tokenizer: PreTrainedTokenizerBase, text: str) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and mm_token_type_ids [1, L] (0 text, 1 image, 2 video: without it transformers v5
    silently falls back to 1-D positions) of an expanded prompt."""
    encoding = tokenizer(text, return_tensors="pt")
    input_ids = encoding["input_ids"]  # [1, L]
    image_id, video_id = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, VIDEO_TOKEN])
    mm_token_type_ids = torch.zeros_like(input_ids)
    mm_token_type_ids[input_ids == image_id] = 1
    mm_token_type_ids[input_ids == video_id] = 2
    return {"input_ids": input_ids, "attention_mask": encoding["attention_mask"], "mm_token_type_ids": mm_token_type_ids}


def as_frames(array: np.ndarray, what: str) -> torch.Tensor:
    """[T, H, W, 3] uint8 numpy -> [T, 3, H, W] uint8 torch, with a clear error for anything else."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        shape = getattr(array, "shape", None)
        dtype = getattr(array, "dtype", type(array).__name__)
        raise ValueError(f"{what}: expected uint8 RGB frames [T, H, W, 3], got {dtype} {shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{what}: no frames")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def find_processor_config(path: Path, nested_key: str, names: tuple[str, ...]) -> tuple[dict, Path]:
    """The first of transformers' sources for a sub-processor's settings that exists in `path`."""
    nested = path / "processor_config.json"  # transformers >= 5 may save sub-processors nested here
    if nested.is_file() and nested_key in (cfg := read_json_object(nested)):
        return cfg[nested_key], nested
    for name in names:
        if (file := path / name).is_file():
            return read_json_object(file), file
    raise ConfigError(f"{path}: no {' or '.join(names)} (nor processor_config.json with '{nested_key}')")


def read_json_object(file: Path) -> dict:
    """A JSON object from `file`; ConfigError naming the file if it cannot be read or is not an object."""
    try:
        cfg = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{file}: cannot read JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return cfg


def parse_pixel_config(cfg: dict, file: Path, *, default_min: int, default_max: int, defaults: Any = None,
                       per_frame_cap: bool = False) -> dict:
    """Settings of one Qwen-VL image/video processor config, resolved as its `__init__` does:
    `min_pixels`/`max_pixels` override `size`'s shortest/longest edge; missing keys take the class defaults of
    `defaults` (a processor class; default `QwenVisionProcessor`). `cap_pixels_per_frame` is refused unless the
    caller reads it (`per_frame_cap`, Qwen3-VL's video processor)."""
    defaults = defaults or QwenVisionProcessor
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if cfg.get(flag, True) is not True:
            raise ConfigError(f"{file}: '{flag}': {cfg[flag]} is not supported (Qwen-VL always applies it)")
    if cfg.get("resample", _BICUBIC) != _BICUBIC:
        raise ConfigError(f"{file}: 'resample': {cfg['resample']} is not supported (Qwen-VL resizes bicubic, 3)")
    if cfg.get("cap_pixels_per_frame") and not per_frame_cap:
        raise ConfigError(f"{file}: 'cap_pixels_per_frame' is not supported; bound frames with max_pixels")
    size = dict(cfg.get("size") or {"shortest_edge": default_min, "longest_edge": default_max})
    min_pixels = cfg.get("min_pixels", size.get("shortest_edge"))
    max_pixels = cfg.get("max_pixels", size.get("longest_edge"))
    if min_pixels is None or max_pixels is None:
        raise ConfigError(f"{file}: 'size' needs 'shortest_edge' and 'longest_edge' (or set min_pixels/max_pixels)")
    return {
        "patch_size": cfg.get("patch_size", defaults.patch_size),
        "temporal_patch_size": cfg.get("temporal_patch_size", defaults.temporal_patch_size),
        "merge_size": cfg.get("merge_size", defaults.merge_size),
        "image_mean": tuple(cfg.get("image_mean", defaults.image_mean)),
        "image_std": tuple(cfg.get("image_std", defaults.image_std)),
        "rescale_factor": cfg.get("rescale_factor", defaults.rescale_factor),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }
