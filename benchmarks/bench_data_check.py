"""`framethink data check` on 1,000 synthetic clips: one process, several processes, and a re-check from the cache.

The clips are lossless H.264, 8 frames of 32x32 at 2 fps (the synthetic set's format, smaller), each with one
Video-R1 record. Three timings, wall clock from the dataset path to the report: a cold check in one process, a
cold check spread over `--workers` processes (a fresh cache, so every file is decoded), and a re-check of the
unchanged files (every answer from the cache: a stat per file and a lookup). Scale to 260k records by the
per-clip figures.

    .venv/bin/python -m benchmarks.bench_data_check [--clips 1000] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from framethink.data.check import check_dataset
from framethink.data.mediacache import MediaCache, default_workers
from framethink.data.video import write_video


def write_clips(folder: Path, count: int, *, frames: int = 8, size: int = 32) -> Path:
    """`count` clips (a square moving over a random background colour) and their records; -> the record file."""
    rng = np.random.default_rng(0)
    rows = []
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        video = np.empty((frames, size, size, 3), np.uint8)
        video[:] = rng.integers(0, 256, 3, dtype=np.uint8)
        for t in range(frames):
            video[t, 8:16, 2 + 2 * t:10 + 2 * t] = 255
        write_video(folder / "clips" / f"{i}.mp4", video, 2)
        rows.append({"problem_id": i, "problem": "Which way does the square move?", "data_type": "video",
                     "problem_type": "multiple choice", "options": ["A. left", "B. right"],
                     "solution": "<answer>B</answer>", "path": f"./clips/{i}.mp4", "data_source": "bench"})
    path = folder / "train.json"
    path.write_text(json.dumps(rows))
    return path


def timed_check(path: Path, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    report = check_dataset(path, **kwargs)
    return time.perf_counter() - start, report


def run(folder: Path, *, clips: int = 1000, workers: int = 2) -> dict:
    """Seconds of each check and per clip; every check must find every record good."""
    path = write_clips(folder, clips)
    serial, report_serial = timed_check(path, workers=1)
    parallel, report_parallel = timed_check(path, workers=workers, cache=MediaCache(folder / "cache.sqlite"))
    cached, report_cached = timed_check(path, workers=workers, cache=MediaCache(folder / "cache.sqlite"))
    for report in (report_serial, report_parallel, report_cached):
        assert report.ok and report.good == clips, report.render()
    assert report_cached.media_cached == clips
    return {"setting": {"clips": clips, "clip": "H.264 8 frames 32x32 at 2 fps", "workers": workers,
                        "cores": len(os.sched_getaffinity(0))},
            "seconds": {"one_process": serial, f"{workers}_processes": parallel, "recheck_from_cache": cached},
            "ms_per_clip": {"one_process": 1e3 * serial / clips, f"{workers}_processes": 1e3 * parallel / clips,
                            "recheck_from_cache": 1e3 * cached / clips}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=min(2, default_workers()))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), clips=args.clips, workers=args.workers)
    print("== data check")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
