"""Small video files for tests, written with PyAV."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LEVEL_STEP = 4  # grey level per frame index in `index_frames`


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int | Fraction,
    *,
    container: str = "mp4",
    gop: int | None = None,
) -> Path:
    """Write [T, H, W, 3] uint8 frames (H, W even) as lossless H.264, a keyframe every `gop` frames.
    mp4 files put the moov atom first, so cutting one keeps the header and loses frames."""
    options = {"movflags": "faststart"} if container == "mp4" else {}
    codec_options = {"qp": "0"} if gop is None else {"qp": "0", "g": str(gop)}
    with av.open(str(path), "w", format=container, options=options) as out:
        stream = out.add_stream("libx264", rate=fps, options=codec_options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def index_frames(num: int, size: int = 32) -> np.ndarray:
    """[num, size, size, 3] grey frames whose level is LEVEL_STEP * index, so a decoded frame tells its index."""
    assert LEVEL_STEP * (num - 1) <= 255
    levels = (LEVEL_STEP * np.arange(num)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num, size, size, 3)).copy()


def decoded_indices(frames: np.ndarray) -> np.ndarray:
    """Inverse of `index_frames` on decoded frames: [T, H, W, 3] -> [T] source indices."""
    return np.round(frames.reshape(len(frames), -1).mean(axis=1) / LEVEL_STEP).astype(np.int64)
