"""Clips as a model sees them: the frame rule, a bounded cache of decoded clips, and the frame order.

Both policy adapters read their videos through a `ClipReader`, so the sampling rule, the cache and the
ordered / shuffled / reversed orders (T-GRPO and the temporal-sensitivity evaluation) are one code path.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framethink.data.cache import LRUCache
from framethink.data.records import Record
from framethink.data.video import SampledFrames, permute_frames, sample_frames
from framethink.errors import ConfigError

FRAME_ORDERS = ("ordered", "shuffled", "reversed")


def check_frame_order(frame_order: str) -> None:
    if frame_order not in FRAME_ORDERS:
        raise ConfigError(f"frame order {frame_order!r} is not one of {', '.join(FRAME_ORDERS)}")


def shown_order(meta: dict, frame_order: str) -> np.ndarray:
    """Position in the sampled clip of each frame the model was shown, from a `read` clip's meta."""
    if frame_order == "shuffled":
        return np.asarray(meta["permutation"])
    order = np.arange(meta["num_frames"])
    return order[::-1] if frame_order == "reversed" else order


@dataclass(frozen=True)
class FrameRule:
    """How clips are sampled (docs/inputs.md, "Frame sampling"): the Qwen-VL fps rule or exactly `num_frames`
    uniform frames."""

    rule: str = "qwen"
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    num_frames: int = 16


@dataclass
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8, in the requested order
    fps: float  # the real sampling rate (unchanged by reordering)
    # num_frames, fps (the sampling rate), indices (the frames' indices in the decoded video) and timestamps (their
    # seconds) in temporal order whatever the frame order, and the permutation of a shuffled clip
    meta: dict


class ClipReader:
    """Samples a record's video by `rule`, keeps up to `cache_size` decoded clips, and reorders frames."""

    def __init__(self, rule: FrameRule, cache_size: int) -> None:
        self.rule = rule
        self.cache: LRUCache[SampledFrames] = LRUCache(cache_size)

    def sample(self, record: Record) -> SampledFrames:
        path, rule = record.media[0], self.rule
        return self.cache.get_or_compute(
            (str(path), rule, record.start, record.end),
            lambda: sample_frames(
                path, rule=rule.rule, fps=rule.fps, min_frames=rule.min_frames, max_frames=rule.max_frames,
                num_frames=rule.num_frames, start=record.start, end=record.end,
                folder_fps=record.extra.get("fps", 3.0),  # frame folders (MVBench) carry their rate
            ),
        )

    def read(self, record: Record, frame_order: str = "ordered", seed: int = 0) -> Clip:
        """The record's frames in `frame_order`; a shuffled clip uses one seeded permutation (docs/method.md,
        "T-GRPO")."""
        check_frame_order(frame_order)
        sampled = self.sample(record)
        frames = sampled.frames
        meta = {"num_frames": len(frames), "fps": sampled.fps, "indices": sampled.indices.tolist(),
                "timestamps": sampled.timestamps.tolist()}
        if frame_order == "shuffled":
            frames, perm = permute_frames(frames, seed)
            meta["permutation"] = perm.tolist()
        elif frame_order == "reversed":
            frames = frames[::-1].copy()
        return Clip(frames=frames, fps=sampled.fps, meta=meta)
