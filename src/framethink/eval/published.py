"""Published results to compare against (SPEC 7.1), as data.

Scores are percentages. A run matches an entry when its model folder's name is one of the entry's
`models` (case-insensitive), its mode is the entry's and its frame count is the entry's (a run that
left the frame count to the model matches every frame count); `--compare KEY` picks one by key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from framethink.errors import ConfigError

_VIDEO_R1 = "Video-R1 paper, Table 1"
_VIDEO_R1_ABLATION = "Video-R1 paper, Table 2"
_TINYLLAVA = "TinyLLaVA-Video-R1 paper, Table 1"
_VIDEO_R1_BENCHES = ("vsibench", "videommmu", "mmvu", "mvbench", "tempcompass", "videomme")
_TINYLLAVA_BENCHES = ("mvbench", "videomme", "mlvu", "mmvu")


@dataclass(frozen=True)
class Published:
    key: str
    label: str
    source: str
    models: tuple[str, ...]  # model folder names that denote this model
    mode: str  # reason | option
    frames: int
    scores: dict[str, float]  # benchmark -> percent
    note: str = field(default="")


def _scores(benches: tuple[str, ...], values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(benches, values))


PUBLISHED: tuple[Published, ...] = (
    Published("qwen2.5-vl-7b-cot-16f", "Qwen2.5-VL-7B (CoT), 16 frames", _VIDEO_R1, ("Qwen2.5-VL-7B-Instruct",),
              "reason", 16, _scores(_VIDEO_R1_BENCHES, (27.7, 47.8, 59.2, 57.4, 72.2, 53.1))),
    Published("qwen2.5-vl-7b-cot-32f", "Qwen2.5-VL-7B (CoT), 32 frames", _VIDEO_R1, ("Qwen2.5-VL-7B-Instruct",),
              "reason", 32, _scores(_VIDEO_R1_BENCHES, (30.1, 48.1, 60.0, 59.0, 72.6, 56.6))),
    Published("qwen2.5-vl-7b-sft-16f", "Qwen2.5-VL-7B-SFT, 16 frames", _VIDEO_R1,
              ("Qwen2.5-VL-7B-SFT", "Qwen2.5-VL-7B-COT-SFT"),
              "reason", 16, _scores(_VIDEO_R1_BENCHES, (31.8, 47.4, 61.3, 59.4, 69.2, 52.8))),
    Published("qwen2.5-vl-7b-sft-32f", "Qwen2.5-VL-7B-SFT, 32 frames", _VIDEO_R1,
              ("Qwen2.5-VL-7B-SFT", "Qwen2.5-VL-7B-COT-SFT"),
              "reason", 32, _scores(_VIDEO_R1_BENCHES, (33.3, 49.4, 63.5, 60.5, 69.9, 55.4))),
    Published("video-r1-7b-16f", "Video-R1-7B, 16 frames", _VIDEO_R1, ("Video-R1-7B",),
              "reason", 16, _scores(_VIDEO_R1_BENCHES, (34.6, 49.8, 64.2, 62.7, 72.6, 57.4))),
    Published("video-r1-7b-32f", "Video-R1-7B, 32 frames", _VIDEO_R1, ("Video-R1-7B",),
              "reason", 32, _scores(_VIDEO_R1_BENCHES, (35.8, 52.3, 63.8, 63.9, 73.2, 59.3)),
              note="v4 of the paper reports VSI-Bench 37.1"),
    Published("video-r1-7b-wo-image-16f", "Video-R1-7B without image data, 16 frames", _VIDEO_R1_ABLATION,
              ("Video-R1-7B-wo-image",), "reason", 16,
              _scores(_VIDEO_R1_BENCHES[:4], (32.3, 45.8, 60.6, 60.9))),
    Published("video-r1-7b-wo-temporal-16f", "Video-R1-7B with plain GRPO, 16 frames", _VIDEO_R1_ABLATION,
              ("Video-R1-7B-wo-temporal",), "reason", 16,
              _scores(_VIDEO_R1_BENCHES, (32.7, 48.3, 62.1, 61.1, 71.3, 54.5))),
    Published("tinyllava-video-sft-option", "TinyLLaVA-Video-SFT (Option), 16 frames", _TINYLLAVA,
              ("TinyLLaVA-Video-Qwen2.5-3B-Group-16-512",), "option", 16,
              _scores(_TINYLLAVA_BENCHES, (49.0, 42.2, 49.2, 46.1))),
    Published("tinyllava-video-coldstart-reason", "TinyLLaVA-Video-ColdStart (Reason), 16 frames", _TINYLLAVA,
              ("TinyLLaVA-Video-Coldstart_NextQA_16",), "reason", 16,
              _scores(_TINYLLAVA_BENCHES, (33.2, 26.6, 28.6, 22.7))),
    Published("tinyllava-video-r1-reason", "TinyLLaVA-Video-R1 (Reason), 16 frames", _TINYLLAVA,
              ("TinyLLaVA-Video-R1",), "reason", 16,
              _scores(_TINYLLAVA_BENCHES, (49.5, 46.6, 52.4, 46.9)),
              note="evaluated with sampling on, so the published numbers are stochastic"),
)


def published_by_key(key: str) -> Published:
    """The entry named `key`; an unknown key raises ConfigError listing the known ones."""
    for entry in PUBLISHED:
        if entry.key == key:
            return entry
    raise ConfigError(f"unknown published result {key!r}; known: {', '.join(p.key for p in PUBLISHED)}")


def match_published(model: str, *, mode: str, frames: int | None) -> list[Published]:
    """Entries whose model names include the folder name of `model`, with the same mode and frame count."""
    name = Path(model).name.lower()
    return [p for p in PUBLISHED
            if name in (m.lower() for m in p.models) and p.mode == mode and frames in (None, p.frames)]
