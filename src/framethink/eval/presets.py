"""Presets: a reference evaluation's whole protocol in one name (docs/evaluation.md#presets).

A preset sets the frames, pixel bounds, decoding, prompt template and scoring protocol the reference
evaluation used; every flag given explicitly overrides the preset's value, and the predictions header and the
report record the values actually used.

- video-r1-{16,32,64}f: tulerfeng/Video-R1 `src/eval_bench.py` with its `src/qwen-vl-utils` settings for
  inference (README "Inference & Evaluation"): the fps rule (2 fps, 4 to N frames), video frames between
  128*28*28 and 256*28*28 pixels, temperature 0.1, top_p 0.001, 1024 new tokens, the "between the <think> and
  </think> tags" template with the type suffix, scored by `video-r1`.
- tinyllava: ZhangXJ199/TinyLLaVA-Video-R1 `tinyllava/eval/eval_*.py` and `scripts/eval/*.sh`: 16 frames
  (`--num_frame 16 --max_frame 16`, the model's uniform rule and its 384x384 frames), `do_sample=True` at
  generate's default temperature 1.0 and top_p 1.0, 1024 new tokens, the "Output the thinking process in
  <think> </think> and final answer (option) in <answer> </answer> tags." template, scored by `tinyllava`.
"""
from __future__ import annotations

from dataclasses import dataclass

from framethink.errors import ConfigError
from framethink.models.adapter import Decoding


@dataclass(frozen=True)
class Preset:
    name: str
    frames: int
    max_pixels: int | None  # None: the model's own (TinyLLaVA-Video resizes to its SigLIP size)
    min_pixels: int | None
    template: str
    decoding: Decoding
    protocol: str
    source: str


_VIDEO_R1_DECODING = Decoding(max_new_tokens=1024, temperature=0.1, top_p=0.001, do_sample=True)


def _video_r1(frames: int) -> Preset:
    return Preset(f"video-r1-{frames}f", frames=frames, max_pixels=256 * 28 * 28, min_pixels=128 * 28 * 28,
                  template="video-r1-eval", decoding=_VIDEO_R1_DECODING, protocol="video-r1",
                  source="tulerfeng/Video-R1 src/eval_bench.py")


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _video_r1(16), _video_r1(32), _video_r1(64),
    Preset("tinyllava", frames=16, max_pixels=None, min_pixels=None, template="tinyllava-r1",
           decoding=Decoding(max_new_tokens=1024, temperature=1.0, top_p=1.0, do_sample=True), protocol="tinyllava",
           source="ZhangXJ199/TinyLLaVA-Video-R1 tinyllava/eval/eval_*.py"),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
