"""Frame decoding with PyAV and the frame-sampling rules of docs/inputs.md ("Frame sampling").

Nothing here substitutes anything for a bad file: every failure raises `VideoDecodeError(path, reason)`.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from framethink.errors import ConfigError, VideoDecodeError

FRAME_FACTOR = 2  # Qwen-VL frame counts are even: temporal_patch_size is 2
SAMPLING_RULES = ("qwen", "uniform", "qwen3")
# Frame threads (FFmpeg's automatic count, from the cores this process may use) hand every frame from thread to
# thread, ~20-30 us a frame. On 2 cores, for a 64x64 or 96x96 H.264 stream that is 40 % more CPU than decoding
# alone and slower even at best; from 128x128 up the threads win whenever a core is free. Smaller frames decode on
# the calling thread.
FRAME_THREADS_MIN_PIXELS = 128 * 128


@dataclass
class SampledFrames:
    """Frames taken from one video (or one image).

    `fps` is the real sampling rate, T / frames-in-range * video fps (qwen-vl-utils' `sample_fps`); Qwen2.5-VL's
    temporal M-RoPE needs it (docs/inputs.md, "Frame sampling"). An image has fps 0.0: it has no time axis.
    `timestamps` are source frame index / video fps, in seconds from the start of the video.
    `indices` may repeat (uniform rule on a clip shorter than the requested frame count).
    """

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    fps: float
    timestamps: np.ndarray  # [T] float64 seconds
    indices: np.ndarray  # [T] int64 source frame indices


def smart_nframes(
    total_frames: int, video_fps: float, *, fps: float = 2.0, min_frames: int = 4, max_frames: int = 16
) -> int:
    """Number of frames the Qwen-VL rule samples from `total_frames` frames at `video_fps` (docs/inputs.md,
    "Frame sampling").

    As qwen-vl-utils' `smart_nframes`: duration * fps, clamped to [ceil_even(min_frames), floor_even(max_frames)]
    and to `total_frames`, then floored to an even count.
    """
    if fps <= 0 or max_frames < FRAME_FACTOR:
        raise ConfigError(
            f"qwen sampling needs fps > 0 and max_frames >= {FRAME_FACTOR}; got fps={fps}, max_frames={max_frames}"
        )
    if total_frames < FRAME_FACTOR:
        raise ValueError(f"the qwen rule needs at least {FRAME_FACTOR} frames, got {total_frames}")
    lower = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
    upper = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
    nframes = min(max(total_frames / video_fps * fps, lower), upper, total_frames)
    return math.floor(nframes / FRAME_FACTOR) * FRAME_FACTOR


def qwen3_frame_indices(
    total_frames: int, video_fps: float, *, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768
) -> np.ndarray:
    """Indices [N] int64 of the frames Qwen3-VL / Qwen3.5 sample from `total_frames` frames at `video_fps`.

    transformers `Qwen3VLVideoProcessor.sample_frames` (models/qwen3_vl/video_processing_qwen3_vl.py):
    N = int(total / video_fps * fps), clamped to [min_frames, max_frames] and to total; indices =
    round(linspace(0, total - 1, N)). N may be odd: nothing rounds it to the temporal patch (the processor repeats
    the last frame). Raises ValueError without frames or a positive frame rate (transformers would assume 24 fps).
    """
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    if not video_fps > 0 or not fps > 0:
        raise ValueError(f"sampling by fps needs the video's fps > 0 and fps > 0; got video fps {video_fps}, fps {fps}")
    num_frames = int(total_frames / video_fps * fps)
    num_frames = min(max(num_frames, min_frames), max_frames, total_frames)
    return np.linspace(0, total_frames - 1, num_frames).round().astype(np.int64)


def sample_frames(
    path: str | Path,
    *,
    rule: str = "qwen",
    fps: float = 2.0,
    min_frames: int = 4,
    max_frames: int = 16,
    num_frames: int = 16,
    start: float | None = None,
    end: float | None = None,
    folder_fps: float = 3.0,
) -> SampledFrames:
    """Decode the frames a model sees from one video (docs/inputs.md, "Frame sampling").

    `path` is a video file or a folder of frame images (sorted by name) recorded at `folder_fps`, as
    MVBench's episodic_reasoning clips are (3 fps).

    rule "qwen" (Video-R1): `smart_nframes` frames at `fps`, bounded by min/max_frames, at
    round(linspace(first, last, n)); a range of one frame gives that frame (the patchifier repeats it).
    rule "uniform" (TinyLLaVA-Video): exactly `num_frames` frames at
    linspace(first, last, num_frames) truncated to integers, as the reference's `np.linspace(..., dtype=int)`.
    rule "qwen3" (Qwen3-VL / Qwen3.5's video processor): `qwen3_frame_indices` over the frames in range.
    `start`/`end` (seconds, MVBench bounds) restrict sampling to frames ceil(start*fps) .. floor(end*fps), as
    qwen-vl-utils' `calculate_video_frame_range`; an end past the clip is cut at the last frame, as both
    qwen-vl-utils and MVBench do; a start outside the clip or an end not after the start raise.
    Decoding jumps from keyframe to keyframe and locates frames by timestamp (`_decode`); the pixels are those
    of a full sequential decode.
    """
    if rule not in SAMPLING_RULES:
        raise ConfigError(f"unknown frame sampling rule {rule!r}; expected one of {SAMPLING_RULES}")
    if rule == "uniform" and num_frames < 1:
        raise ConfigError(f"uniform sampling needs num_frames >= 1, got {num_frames}")
    path = Path(path)
    folder = _frame_files(path) if path.is_dir() else None
    total, video_fps = (len(folder), folder_fps) if folder is not None else _probe(path)
    first, last = _frame_range(path, total, video_fps, start, end)
    count = last - first + 1
    if rule == "qwen" and count < FRAME_FACTOR:
        # Fewer frames than one temporal patch: take them all; the Qwen-VL patchifier repeats the last frame to fill
        # the patch, as transformers' Qwen2VLVideoProcessor does for any frame count that is not a multiple of it.
        indices = np.arange(first, last + 1, dtype=np.int64)
    elif rule == "qwen":
        nframes = smart_nframes(count, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames)
        indices = np.round(np.linspace(first, last, nframes)).astype(np.int64)
    elif rule == "qwen3":
        indices = first + qwen3_frame_indices(count, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames)
    else:
        indices = np.linspace(first, last, num_frames, dtype=np.int64)
    if folder is not None:
        frames = np.stack([load_image(folder[i]).frames[0] for i in indices.tolist()])
    else:
        frames = _decode(path, indices, total)
    return SampledFrames(
        frames=frames,
        fps=len(indices) / count * video_fps,
        timestamps=indices / video_fps,
        indices=indices,
    )


def load_image(path: str | Path) -> SampledFrames:
    """Decode one image as a single frame, fps 0.0, timestamp 0, index 0.

    RGBA is composited on white, other modes converted to RGB, as qwen-vl-utils' `to_rgb`.
    """
    path = Path(path)
    _require_file(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now so that a truncated file fails here
            if image.mode == "RGBA":
                rgb = Image.new("RGB", image.size, (255, 255, 255))
                rgb.paste(image, mask=image.split()[3])
            else:
                rgb = image.convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
        raise VideoDecodeError(path, f"cannot decode image: {err}") from err
    frames = np.array(rgb, dtype=np.uint8)[None]  # [1, H, W, 3], writable
    return SampledFrames(frames=frames, fps=0.0, timestamps=np.zeros(1), indices=np.zeros(1, dtype=np.int64))


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


def verify_media(path: str | Path, kind: str) -> None:
    """Check that a record's media can be used: an image decodes; a video has a frame rate, a frame count and
    a decodable first and last frame. Raises VideoDecodeError naming the path and the fault."""
    if kind == "image":
        load_image(path)
        return
    if kind != "video":
        raise ValueError(f"media kind must be 'image' or 'video', got {kind!r}")
    path = Path(path)
    if path.is_dir():  # a frame folder: its first image must decode
        load_image(_frame_files(path)[0])
        return
    total, _ = _probe(path)
    # The first and the last frame, through the decoder sampling uses: a clip cut short (the common corruption)
    # fails here exactly as it would when a run samples it, so the check and the runs accept the same files.
    _decode(path, np.array(sorted({0, total - 1}), dtype=np.int64), total)


def permute_frames(frames: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """T-GRPO's shuffled clip (docs/method.md, "T-GRPO"): frames in a seeded random order, and that order.

    For T > 1 the order is never the identity, so the shuffled group really lacks the temporal order.
    """
    num = frames.shape[0]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num)  # [T]
    while num > 1 and np.array_equal(perm, np.arange(num)):
        perm = rng.permutation(num)
    return frames[perm], perm


def _require_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")


@contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except av.FFmpegError as err:
        raise VideoDecodeError(path, f"cannot decode video: {err}") from err


FRAME_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _frame_files(folder: Path) -> list[Path]:
    """The frame images of a frame folder, in name order."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_IMAGE_SUFFIXES)
    if not files:
        raise VideoDecodeError(folder, f"frame folder holds no {'/'.join(FRAME_IMAGE_SUFFIXES)} images")
    return files


def _probe(path: Path) -> tuple[int, float]:
    """Total frame count and average frame rate of the first video stream."""
    _require_file(path)
    with _decode_errors(path), av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoDecodeError(path, "the video stream has no frame rate")
        # Matroska/WebM headers carry no frame count (stream.frames == 0): count packets, which needs no decoding.
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if total == 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    return total, float(rate)


def _frame_range(
    path: Path, total: int, video_fps: float, start: float | None, end: float | None
) -> tuple[int, int]:
    """First and last source frame inside the [start, end] bounds, in seconds."""
    duration = total / video_fps
    if start is not None and not 0.0 <= start < duration:
        raise VideoDecodeError(path, f"start bound {start}s lies outside the clip (0 to {duration:.3f}s)")
    if end is not None and end <= (start or 0.0):
        raise VideoDecodeError(path, f"end bound {end}s is not after the start bound {start or 0.0}s")
    first = math.ceil(start * video_fps) if start is not None else 0
    last = min(math.floor(end * video_fps), total - 1) if end is not None else total - 1
    if first > last:
        raise VideoDecodeError(path, f"no frame lies between {start}s and {end}s")
    return first, last


def _decode(path: Path, indices: np.ndarray, total: int) -> np.ndarray:
    """The frames at `indices`, converting only those to RGB. -> [T, H, W, 3] uint8

    A packet scan (no decoding) orders the frames by presentation timestamp and lists the keyframes. Decoding runs
    forward and jumps to the keyframe before the next wanted frame whenever that keyframe lies past the current
    position, as decord does, so sparse samples of a long clip do not decode every frame in between. Frames are
    identified by timestamp; a stream whose packets lack distinct timestamps is decoded from the start and its
    frames counted in order.
    """
    wanted = sorted(set(indices.tolist()))
    kept: dict[int, np.ndarray] = {}
    with _decode_errors(path), av.open(str(path)) as container:  # its own pass: raw streams cannot seek back
        stamps = [(packet.pts, packet.is_keyframe) for packet in container.demux(video=0) if packet.size]
    order = sorted(pts for pts, _ in stamps if pts is not None)
    timed = len(set(order)) == len(stamps)
    rank = {pts: i for i, pts in enumerate(order)} if timed else {}
    keys = sorted(rank[pts] for pts, key in stamps if key) if timed else []
    # One colour converter, on the calling thread, for all frames: a frame's own `to_ndarray(format=...)` builds a
    # fresh swscale context with its own thread pool for every frame, ~0.8 ms a frame at 64x64 (~1.5 ms at
    # 224x224), twenty times the cost of decoding a 64x64 frame. The pixels are the same.
    reformatter = VideoReformatter()
    with _decode_errors(path), av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if stream.width * stream.height >= FRAME_THREADS_MIN_PIXELS else "NONE"
        frames = container.decode(stream)
        position = -1  # index of the last decoded frame
        try:
            for target in wanted:
                at = bisect.bisect_right(keys, target)
                if at and keys[at - 1] > position + 1:  # the keyframe before `target` lies ahead: skip to it
                    container.seek(order[keys[at - 1]], stream=stream)
                    frames = container.decode(stream)
                for frame in frames:
                    if timed and frame.pts not in rank:
                        raise VideoDecodeError(
                            path, f"a decoded frame has timestamp {frame.pts}, which no packet carries"
                        )
                    position = rank[frame.pts] if timed else position + 1
                    if position >= target:
                        break
                if position != target:
                    break
                kept[target] = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        except av.FFmpegError as err:  # a damaged packet: the threadless decoder reports it, frame threads drop it
            raise VideoDecodeError(path, f"frame {target} of {total} could not be decoded: {err}") from err
    missing = sorted(set(wanted) - kept.keys())
    if missing:
        raise VideoDecodeError(
            path, f"frame {missing[0]} of {total} could not be decoded (the stream ends early: truncated or corrupt)"
        )
    return np.stack([kept[i] for i in indices.tolist()])
