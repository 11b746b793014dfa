"""Published results to compare against (docs/evaluation.md#why-published-numbers-differ).

An entry names a model and the setting and scoring protocol its numbers were measured under; its numbers live
in the benchmark files (`published` of each `BenchmarkSpec`), keyed by the entry's key. Scores are percentages.
A run matches an entry when its model folder's name is one of the entry's `models` (case-insensitive), its mode
is the entry's and its frame count is the entry's (a run that left the frame count to the model matches every
frame count); `--compare KEY` picks one by key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from framethink.errors import ConfigError
from framethink.eval.benchmarks import REGISTRY

_VIDEO_R1 = "Video-R1 paper, Table 1"
_VIDEO_R1_ABLATION = "Video-R1 paper, Table 2"
_TINYLLAVA = "TinyLLaVA-Video-R1 paper, Table 1"
_QWEN = ("Qwen2.5-VL-7B-Instruct",)
_QWEN_SFT = ("Qwen2.5-VL-7B-SFT", "Qwen2.5-VL-7B-COT-SFT")


@dataclass(frozen=True)
class Published:
    key: str
    label: str
    source: str
    models: tuple[str, ...]  # model folder names that denote this model
    mode: str  # reason | option
    frames: int
    protocol: str  # the scoring protocol the numbers were measured under
    note: str = field(default="")

    @property
    def scores(self) -> dict[str, float]:
        """benchmark -> percent, from the benchmark files."""
        return {name: spec.published[self.key] for name, spec in REGISTRY.items() if self.key in spec.published}


PUBLISHED: tuple[Published, ...] = (
    Published("qwen2.5-vl-7b-cot-16f", "Qwen2.5-VL-7B (CoT), 16 frames", _VIDEO_R1, _QWEN, "reason", 16, "video-r1"),
    Published("qwen2.5-vl-7b-cot-32f", "Qwen2.5-VL-7B (CoT), 32 frames", _VIDEO_R1, _QWEN, "reason", 32, "video-r1"),
    Published("qwen2.5-vl-7b-sft-16f", "Qwen2.5-VL-7B-SFT, 16 frames", _VIDEO_R1, _QWEN_SFT, "reason", 16, "video-r1"),
    Published("qwen2.5-vl-7b-sft-32f", "Qwen2.5-VL-7B-SFT, 32 frames", _VIDEO_R1, _QWEN_SFT, "reason", 32, "video-r1"),
    Published("video-r1-7b-16f", "Video-R1-7B, 16 frames", _VIDEO_R1, ("Video-R1-7B",), "reason", 16, "video-r1"),
    Published("video-r1-7b-32f", "Video-R1-7B, 32 frames", _VIDEO_R1, ("Video-R1-7B",), "reason", 32, "video-r1",
              note="v4 of the paper reports VSI-Bench 37.1"),
    Published("video-r1-7b-wo-image-16f", "Video-R1-7B without image data, 16 frames", _VIDEO_R1_ABLATION,
              ("Video-R1-7B-wo-image",), "reason", 16, "video-r1"),
    Published("video-r1-7b-wo-temporal-16f", "Video-R1-7B with plain GRPO, 16 frames", _VIDEO_R1_ABLATION,
              ("Video-R1-7B-wo-temporal",), "reason", 16, "video-r1"),
    Published("tinyllava-video-sft-option", "TinyLLaVA-Video-SFT (Option), 16 frames", _TINYLLAVA,
              ("TinyLLaVA-Video-Qwen2.5-3B-Group-16-512",), "option", 16, "tinyllava"),
    Published("tinyllava-video-coldstart-reason", "TinyLLaVA-Video-ColdStart (Reason), 16 frames", _TINYLLAVA,
              ("TinyLLaVA-Video-Coldstart_NextQA_16",), "reason", 16, "tinyllava"),
    Published("tinyllava-video-r1-reason", "TinyLLaVA-Video-R1 (Reason), 16 frames", _TINYLLAVA,
              ("TinyLLaVA-Video-R1",), "reason", 16, "tinyllava",
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
