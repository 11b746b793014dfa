"""A synthetic clip for the server tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from framethink.data.video import write_video


def colour_clip(path: Path, *, frames: int = 16, size: int = 28, fps: int = 8) -> Path:
    """Red for the first half, blue for the second."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[: frames // 2, ..., 0] = 255
    video[frames // 2:, ..., 2] = 255
    return write_video(path, video, fps)
