"""Figure (c): frame decoding, framethink's `sample_frames` against decord on the same clips and frame indices.

Clips are H.264 at 24 fps with a keyframe every 2 s (a moving gradient plus noise, so that the codec has real
work): 10 s at 64x64 and 224x224, and 60 s at 224x224 (LLaVA-Video's 30-60 s clips). Each timing goes from the
file path to a [T, H, W, 3] uint8 array: framethink's `sample_frames(rule="uniform", num_frames=T)` (probe,
a packet scan that lists the keyframes, then decoding that jumps to the keyframe before a wanted frame when that
keyframe lies ahead, converting only the wanted frames with one colour converter), and decord's
`VideoReader(path)` + `get_batch(indices)` on the indices framethink chose.
decord uses its default decoding threads (frame threads, FFmpeg's automatic count); framethink uses them from 128x128
up and none below (`FRAME_THREADS_MIN_PIXELS`). The outputs are compared pixel by pixel.

    .venv/bin/python -m benchmarks.bench_decode
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import limit_threads, print_result, stats, timed, write_clip
from framethink.data.video import FRAME_THREADS_MIN_PIXELS, sample_frames

CLIP_FPS, GOP = 24, 48
CLIPS = ((10, 64), (10, 224), (60, 224))  # (seconds, size)


def run(work: Path, *, clips: tuple[tuple[int, int], ...] = CLIPS, frame_counts: tuple[int, ...] = (16, 32),
        repeats: int = 5) -> dict:
    """Median seconds per clip of framethink and decord at every clip and frame count (repeats interleaved, so
    that a change in machine load hits both), and the ratios."""
    import decord

    rows = []
    for seconds, size in clips:
        clip = write_clip(work / f"clip{seconds}s{size}.mp4", width=size, height=size, seconds=seconds, fps=CLIP_FPS,
                          gop=GOP)
        for count in frame_counts:
            ours = sample_frames(clip, rule="uniform", num_frames=count)
            order = ours.indices.tolist()
            decoders = {
                "framethink": lambda clip=clip, count=count: (
                    sample_frames(clip, rule="uniform", num_frames=count).frames),
                "decord": lambda clip=clip, order=order: (
                    decord.VideoReader(str(clip), ctx=decord.cpu(0)).get_batch(order).asnumpy()),
            }
            outputs = {name: decode() for name, decode in decoders.items()}  # also the warm-up
            clocked = {name: [] for name in decoders}
            for _ in range(repeats):
                for name, decode in decoders.items():
                    clocked[name] += timed(decode, repeats=1, warmup=0)
            times = {name: stats([wall for wall, _ in values]) for name, values in clocked.items()}
            cpu = {name: stats([c for _, c in values]) for name, values in clocked.items()}
            rows.append({
                "clip": f"{seconds} s {size}x{size}", "frames": count, **{f"{k}_wall_s": v for k, v in times.items()},
                **{f"{k}_cpu_s": v for k, v in cpu.items()},
                "framethink_vs_decord": times["decord"]["median"] / times["framethink"]["median"],
                "framethink_vs_decord_cpu": cpu["decord"]["median"] / cpu["framethink"]["median"],
                "max_pixel_difference": {name: int(np.abs(out.astype(int) - ours.frames.astype(int)).max())
                                         for name, out in outputs.items() if name != "framethink"},
            })
    return {"setting": {"clips": f"H.264 yuv420p at {CLIP_FPS} fps, keyframe every {GOP} frames",
                        "repeats": repeats, "torch_threads": 1,
                        "decoding_threads": "decord: its default (frame threads); framethink: frame threads from "
                                            f"{FRAME_THREADS_MIN_PIXELS} pixels a frame, none below",
                        "cores": len(os.sched_getaffinity(0))},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    limit_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), repeats=args.repeats)
    print_result("frame decoding: framethink vs decord", result)
    for row in result["rows"]:
        print(f"{row['clip']:>14} {row['frames']:>3} frames, median wall: framethink "
              f"{row['framethink_wall_s']['median'] * 1e3:6.1f} ms ({row['framethink_vs_decord']:.2f}x decord), decord "
              f"{row['decord_wall_s']['median'] * 1e3:6.1f} ms; CPU ratio {row['framethink_vs_decord_cpu']:.2f}x; max pixel difference {row['max_pixel_difference']}")


if __name__ == "__main__":
    main()
