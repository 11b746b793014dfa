"""Qwen3-VL / Qwen3.5 model inputs in plain torch, as transformers' `Qwen3VLProcessor` builds them.

Both families use one processor (transformers `models/qwen3_vl/processing_qwen3_vl.py`, `Qwen3VLProcessor`):
- images: Qwen2-VL's image processor with patch 16 and mean = std = 0.5 (`Qwen2VLImageProcessor`), i.e.
  `framethink.models.qwen_vl.inputs.QwenVisionProcessor` with those settings;
- videos: `Qwen3VLVideoProcessor` (`video_processing_qwen3_vl.py`): frames sampled by fps
  (`framethink.data.video.qwen3_frame_indices`, frame rule "qwen3"), one smart resize over the whole clip
  (`video_smart_resize`: the budget counts the pixels of every frame), optionally capped per frame
  (`video_max_pixels`), then the same normalise and patchify as Qwen2-VL;
- the prompt: every temporal patch (2 frames) of a video is written as `<{t:.1f} seconds>` followed by
  `<|vision_start|>` + one `<|video_pad|>` per merged patch + `<|vision_end|>`, t being the mean time of its
  first and last frame (`temporal_patch_times`); the chat template's `<|vision_start|><|video_pad|><|vision_end|>`
  wrapper is replaced by these blocks. Images keep the wrapper and expand `<|image_pad|>` as Qwen2-VL does.

The timestamps come from the frames' indices in the decoded video and the video's own frame rate; nothing
here ever falls back to transformers' 24 fps default. See docs/inputs.md.
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
from transformers import PreTrainedTokenizerBase

from framethink.data.video import qwen3_frame_indices
from framethink.errors import ConfigError
from framethink.models.qwen_vl.inputs import (
    IMAGE_TOKEN,
    MAX_RATIO,
    VIDEO_TOKEN,
    QwenVisionProcessor,
    as_frames,
    check_placeholders,
    find_processor_config,
    parse_pixel_config,
    tokenize_with_types,
)

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VIDEO_WRAPPER = VISION_START + VIDEO_TOKEN + VISION_END  # what the chat template writes for one video
PROCESSOR_CLASS = "Qwen3VLProcessor"


def temporal_patch_times(frame_times: np.ndarray | list[float], temporal_patch_size: int = 2) -> list[float]:
    """Time in seconds of each temporal patch: the mean of its first and last frame's time.

    `frame_times` [T] are the sampled frames' times in the video, frame index / the video's fps
    (`framethink.data.video.SampledFrames.timestamps`). transformers `Qwen3VLProcessor._calculate_timestamps`: a
    frame count that is not a multiple of the temporal patch repeats its last frame (as the pixels do).
    """
    times = [float(t) for t in frame_times]
    if not times:
        raise ValueError("frame timestamps need at least one frame")
    if not all(math.isfinite(t) and t >= 0 for t in times):
        raise ValueError(f"frame timestamps must be finite seconds >= 0, got {times}")
    if pad := -len(times) % temporal_patch_size:
        times.extend([times[-1]] * pad)
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def timestamp_text(seconds: float) -> str:
    """The text Qwen3-VL writes before a temporal patch: `<{seconds:.1f} seconds>`."""
    return f"<{seconds:.1f} seconds>"


def video_max_pixels(
    num_frames: int,
    *,
    min_pixels: int,
    max_pixels: int,
    cap_pixels_per_frame: bool,
    max_video_tokens: int,
    factor: int,
) -> int:
    """The pixel budget of a whole clip of `num_frames` frames (transformers `Qwen3VLVideoProcessor.resize`).

    Without the cap it is `max_pixels` (size.longest_edge) for the clip, whatever its length. With
    `cap_pixels_per_frame` (qwen-vl-utils' rule) each frame may have at most
    max(min(max_video_tokens * factor^2, max_pixels // num_frames), int(1.05 * min_pixels)) pixels.
    """
    if not cap_pixels_per_frame:
        return max_pixels
    frame_cap = max_video_tokens * factor * factor
    per_frame = max(min(frame_cap, max_pixels // num_frames), int(min_pixels * 1.05))
    return per_frame * num_frames


def video_smart_resize(
    num_frames: int,
    height: int,
    width: int,
    *,
    temporal_factor: int = 2,
    factor: int = 32,
    min_pixels: int,
    max_pixels: int,
) -> tuple[int, int]:
    """Frame size (H', W') of a clip, as transformers `video_processing_qwen3_vl.smart_resize`.

    H' and W' are multiples of `factor` near the aspect ratio, and the clip's pixel count
    t' * H' * W' (t' = num_frames rounded to the temporal factor, half to even) lies in [min_pixels, max_pixels];
    frames smaller than `factor` on a side are first scaled up to it.
    """
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class VideoClip:
    """One video as Qwen3-VL receives it.

    `frames` [T, H, W, 3] uint8 are in the order the model sees them; `timestamps` [T] are the sampled frames' times
    in seconds (frame index in the decoded video / the video's own fps) in temporal order: the timestamp text is
    computed from them. A clip whose frames are shuffled or reversed (T-GRPO, temporal tests) keeps the timestamps of
    the ordered clip, so only the pixel content is permuted and the text still reads the true times
    (docs/inputs.md, frame order).
    """

    frames: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def from_indices(cls, frames: np.ndarray, indices: np.ndarray, video_fps: float) -> VideoClip:
        """A clip of frames sampled at `indices` of a video decoded at `video_fps` frames per second."""
        if not video_fps > 0:
            raise ValueError(f"frame timestamps need the video's real fps > 0, got {video_fps}")
        return cls(frames=frames, timestamps=np.asarray(indices, dtype=np.int64) / video_fps)


@dataclass(frozen=True)
class EncodedVideo:
    """A processed video: pixel_values_videos [N, C*Tp*P*P], video_grid_thw [1, 3] and the time of each
    temporal patch (seconds)."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    patch_times: list[float]


@dataclass(frozen=True)
class Qwen3VisionProcessor:
    """Pixel preprocessing of Qwen3-VL and Qwen3.5 (transformers' `Qwen2VLImageProcessor` with patch 16 for
    images, `Qwen3VLVideoProcessor` for videos).

    Defaults are the released checkpoints' processor configs (Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3.5-*):
    images 65,536 .. 16,777,216 pixels each; videos 4,096 .. 25,165,824 pixels per clip (all frames together)
    and the video processor's sampling defaults (2 fps, 4 .. 768 frames), per-frame cap off (the class default).
    """

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, ...] = IMAGENET_STANDARD_STD
    rescale_factor: float = 1 / 255
    image_min_pixels: int = 65_536
    image_max_pixels: int = 16_777_216
    video_min_pixels: int = 4_096
    video_max_pixels: int = 25_165_824
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768

    @property
    def pixels(self) -> QwenVisionProcessor:
        """The Qwen2-VL pixel pipeline with this processor's patching and normalisation (images and patchify)."""
        return QwenVisionProcessor(
            patch_size=self.patch_size, temporal_patch_size=self.temporal_patch_size, merge_size=self.merge_size,
            image_mean=self.image_mean, image_std=self.image_std, rescale_factor=self.rescale_factor,
            image_min_pixels=self.image_min_pixels, image_max_pixels=self.image_max_pixels,
            video_min_pixels=self.video_min_pixels, video_max_pixels=self.video_max_pixels, absolute_time=False,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> Qwen3VisionProcessor:
        """Read a checkpoint's `preprocessor_config.json` (images) and `video_preprocessor_config.json` (videos),
        or their entries in `processor_config.json`, resolved as transformers does, then apply `overrides`
        (field names of this class, e.g. `video_max_pixels=...`).

        Pixel bounds come from `size: {shortest_edge, longest_edge}` (or `min_pixels` / `max_pixels`); a
        setting framethink does not reproduce (no resize, another resample, ...) is a ConfigError naming the file.
        """
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path}: checkpoint directory does not exist")
        image_cfg, image_file = find_processor_config(path, "image_processor", ("preprocessor_config.json",))
        video_cfg, video_file = find_processor_config(path, "video_processor", ("video_preprocessor_config.json",))
        image = parse_pixel_config(image_cfg, image_file, default_min=cls.image_min_pixels,
                                   default_max=cls.image_max_pixels, defaults=cls)
        video = parse_pixel_config(video_cfg, video_file, default_min=cls.video_min_pixels,
                                   default_max=cls.video_max_pixels, defaults=cls, per_frame_cap=True)
        for key in _SHARED:
            if image[key] != video[key]:
                raise ConfigError(f"{video_file}: '{key}' = {video[key]} differs from {image[key]} in {image_file}")
        sampling = {key: video_cfg[key] for key in ("fps", "min_frames", "max_frames", "max_video_tokens")
                    if key in video_cfg}
        if video_cfg.get("num_frames") is not None:
            raise ConfigError(f"{video_file}: 'num_frames' is not supported; Qwen3-VL samples by fps")
        processor = cls(
            **{key: image[key] for key in _SHARED},
            image_min_pixels=image["min_pixels"], image_max_pixels=image["max_pixels"],
            video_min_pixels=video["min_pixels"], video_max_pixels=video["max_pixels"],
            cap_pixels_per_frame=bool(video_cfg.get("cap_pixels_per_frame") or False),
            **sampling,
        )
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(overrides) - known):
            raise ConfigError(f"unknown vision processor override(s) {unknown}; known: {sorted(known)}")
        return replace(processor, **overrides)

    def save_pretrained(self, out: str | Path) -> None:
        """Write `preprocessor_config.json` and `video_preprocessor_config.json` in the released checkpoints'
        layout (size: shortest_edge / longest_edge), with the video sampling settings and the per-frame cap written
        out so that transformers' `AutoProcessor` reads exactly this processor back."""
        out = Path(out)
        shared = {
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "rescale_factor": self.rescale_factor, "processor_class": PROCESSOR_CLASS,
        }
        image = {"size": {"longest_edge": self.image_max_pixels, "shortest_edge": self.image_min_pixels}, **shared,
                 "image_processor_type": "Qwen2VLImageProcessorFast"}
        video = {"size": {"longest_edge": self.video_max_pixels, "shortest_edge": self.video_min_pixels}, **shared,
                 "fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames,
                 "cap_pixels_per_frame": self.cap_pixels_per_frame, "max_video_tokens": self.max_video_tokens,
                 "video_processor_type": "Qwen3VLVideoProcessor"}
        (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
        (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")

    def sample_indices(self, total_frames: int, video_fps: float) -> np.ndarray:
        """`framethink.data.video.qwen3_frame_indices` with this processor's fps and frame bounds (frame rule
        "qwen3" samples clips by it)."""
        return qwen3_frame_indices(
            total_frames, video_fps, fps=self.fps, min_frames=self.min_frames, max_frames=self.max_frames
        )

    def process_images(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [H, W, 3] uint8 -> (pixel_values [N_patches, 3*2*16*16] float32, image_grid_thw [N, 3])."""
        return self.pixels.process_images(images)

    def video_size(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """Frame size (H', W') of a clip of `num_frames` frames of H x W after the video processor's resize."""
        factor = self.patch_size * self.merge_size
        budget = video_max_pixels(
            num_frames, min_pixels=self.video_min_pixels, max_pixels=self.video_max_pixels,
            cap_pixels_per_frame=self.cap_pixels_per_frame, max_video_tokens=self.max_video_tokens, factor=factor,
        )
        return video_smart_resize(
            num_frames, height, width, temporal_factor=self.temporal_patch_size, factor=factor,
            min_pixels=self.video_min_pixels, max_pixels=budget,
        )

    def process_video(self, clip: VideoClip) -> EncodedVideo:
        """One clip -> pixels, grid and the time of each temporal patch.

        A one-frame clip is first padded to the temporal patch by repeating its frame (and its time):
        transformers' video processor refuses one frame ("t:1 must be larger than temporal_factor:2"), while the
        padded clip is exactly what it makes of any odd count, so a one-frame video is a single temporal patch.
        """
        frames = as_frames(clip.frames, "video")  # [T, 3, H, W] uint8
        times = np.asarray(clip.timestamps, dtype=np.float64)
        if times.shape != (len(frames),):
            raise ValueError(f"video: {len(frames)} frames but timestamps of shape {tuple(times.shape)}")
        if len(frames) < self.temporal_patch_size:
            pad = self.temporal_patch_size - len(frames)
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
            times = np.concatenate([times, np.repeat(times[-1:], pad)])
        height, width = self.video_size(len(frames), frames.shape[2], frames.shape[3])
        pixels, grid = self.pixels.encode_frames(frames, height, width)
        return EncodedVideo(
            pixel_values=pixels,
            grid_thw=torch.tensor([grid], dtype=torch.long),
            patch_times=temporal_patch_times(times, self.temporal_patch_size),
        )


_SHARED = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "rescale_factor")


def video_prompt_text(patch_times: list[float], tokens_per_patch: int) -> str:
    """What replaces one video in the prompt: per temporal patch, its timestamp text and its vision block
    (transformers `Qwen3VLProcessor.replace_video_token`)."""
    block = VISION_START + VIDEO_TOKEN * tokens_per_patch + VISION_END
    return "".join(timestamp_text(t) + block for t in patch_times)


def build_qwen3_inputs(
    tokenizer: PreTrainedTokenizerBase,
    processor: Qwen3VisionProcessor,
    messages: list[dict],
    *,
    images: list[np.ndarray] = (),
    videos: list[VideoClip] = (),
    add_generation_prompt: bool = True,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Render a Qwen3-VL / Qwen3.5 chat and return the forward's inputs, batch dim 1, as `Qwen3VLProcessor` does.

    `messages` use Qwen's content lists (`{"type": "video"}`, `{"type": "image"}`, `{"type": "text", ...}`);
    `images` [H, W, 3] uint8 and `videos` (`VideoClip`) fill the placeholders in order. `chat_template_kwargs`
    go to the chat template (e.g. `enable_thinking=False` for Qwen3.5).
    Returns input_ids, attention_mask, mm_token_type_ids [1, L] (0 text, 1 image, 2 video; the timestamp text
    is text), plus pixel_values / image_grid_thw and pixel_values_videos / video_grid_thw for the media present.
    """
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {})
    )
    check_placeholders(text, len(images), len(videos))
    out: dict[str, torch.Tensor] = {}
    merge = processor.merge_size**2
    replacements: dict[str, list[str]] = {IMAGE_TOKEN: [], VIDEO_TOKEN: []}
    if images:
        out["pixel_values"], out["image_grid_thw"] = processor.process_images(list(images))
        replacements[IMAGE_TOKEN] = [IMAGE_TOKEN * int(n) for n in out["image_grid_thw"].prod(-1) // merge]
    if videos:
        encoded = [processor.process_video(clip) for clip in videos]
        out["pixel_values_videos"] = torch.cat([video.pixel_values for video in encoded])
        out["video_grid_thw"] = torch.cat([video.grid_thw for video in encoded])
        replacements[VIDEO_TOKEN] = [
            video_prompt_text(video.patch_times, int(video.grid_thw[0, 1:].prod()) // merge) for video in encoded
        ]
        # each frame block brings its own vision start/end, so the template's wrapper around the video goes
        text = text.replace(VIDEO_WRAPPER, VIDEO_TOKEN)

    pending = {token: iter(values) for token, values in replacements.items()}
    pattern = f"{re.escape(IMAGE_TOKEN)}|{re.escape(VIDEO_TOKEN)}"
    text = re.sub(pattern, lambda match: next(pending[match.group()]), text)

    return {**tokenize_with_types(tokenizer, text), **out}
