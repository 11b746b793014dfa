"""Small video files for tests (written with framethink's own `write_video`)."""
from __future__ import annotations

import numpy as np

from framethink.data.video import write_video  # noqa: F401  (re-exported for the tests)

LEVEL_STEP = 4  # grey level per frame index in `index_frames`


def index_frames(num: int, size: int = 32) -> np.ndarray:
    """[num, size, size, 3] grey frames whose level is LEVEL_STEP * index, so a decoded frame tells its index."""
    assert LEVEL_STEP * (num - 1) <= 255
    levels = (LEVEL_STEP * np.arange(num)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num, size, size, 3)).copy()


def decoded_indices(frames: np.ndarray) -> np.ndarray:
    """Inverse of `index_frames` on decoded frames: [T, H, W, 3] -> [T] source indices."""
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / LEVEL_STEP).astype(np.int64)
