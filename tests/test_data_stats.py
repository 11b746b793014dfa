"""`framethink data stats`: durations, frame counts, resolutions and text lengths by source and problem type,
hand-checked on known clips, as a table, a JSON summary and PNG histograms."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framethink.cli import main
from framethink.data.stats import dataset_stats
from framethink.data.video import write_video


@pytest.fixture(autouse=True)
def media_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Clips of 4, 8 and 12 frames at 2 fps (2, 4, 6 s; 32x16 px) asking multiple choice, a 10 fps 20-frame clip
    (2 s; 64x48) asking a number, a 30x20 image, and a text question; from two sources."""
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for i, (frames, fps, w, h) in enumerate([(4, 2, 32, 16), (8, 2, 32, 16), (12, 2, 32, 16), (20, 10, 64, 48)]):
        write_video(media / f"{i}.mp4", np.zeros((frames, h, w, 3), np.uint8), fps)
        numeric = i == 3
        rows.append({"problem_id": i, "problem": "how many dots are there" if numeric else "which one is it",
                     "data_type": "video", "problem_type": "numerical" if numeric else "multiple choice",
                     "options": [] if numeric else ["A. this", "B. that"],
                     "solution": "<answer>12</answer>" if numeric else "<answer>A</answer>", "path": f"{i}.mp4",
                     "data_source": "clips", "process": "<think>one two three</think>"})
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(media / "p.png")
    rows.append({"problem_id": 4, "problem": "read the sign", "data_type": "image", "problem_type": "OCR",
                 "solution": "<answer>stop right here</answer>", "path": "p.png", "data_source": "signs"})
    rows.append({"problem_id": 5, "problem": "say hello", "problem_type": "free-form",
                 "solution": "<answer>hello there</answer>", "data_source": "signs"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def group(summary: list[dict], source: str, ptype: str) -> dict:
    return next(g for g in summary if (g["source"], g["problem_type"]) == (source, ptype))


def test_values_by_source_and_problem_type(dataset):
    stats = dataset_stats(dataset, root=dataset.parent / "media", workers=2)
    np.testing.assert_allclose(stats.values["duration"][:4], [2.0, 4.0, 6.0, 2.0])
    np.testing.assert_allclose(stats.values["frames"][:4], [4, 8, 12, 20])
    np.testing.assert_allclose(stats.values["pixels"][:5], [512, 512, 512, 3072, 600])
    assert np.isnan(stats.values["duration"][4:]).all() and np.isnan(stats.values["pixels"][5])
    np.testing.assert_allclose(stats.values["answer_words"], [1, 1, 1, 1, 3, 2])
    summary = stats.summary()
    mc = group(summary, "clips", "multiple choice")
    assert mc["records"] == 3 and mc["duration"] == {"count": 3, "median": 4.0, "p90": 5.6, "max": 6.0}
    assert mc["question_words"]["median"] == 4.0 and mc["process_words"]["max"] == 3.0
    clips = group(summary, "clips", "*")  # a source with several problem types gets its own row
    assert clips["records"] == 4 and clips["frames"]["max"] == 20.0 and clips["fps"]["median"] == 2.0
    everything = group(summary, "*", "*")
    assert everything["records"] == 6 and everything["pixels"]["count"] == 5
    assert group(summary, "signs", "free-form")["duration"] is None
    assert not stats.media_errors


def test_command_writes_table_json_and_histograms(dataset, tmp_path, capsys):
    (dataset.parent / "media" / "2.mp4").write_bytes(b"broken")
    out = tmp_path / "report"
    assert main(["data", "stats", str(dataset), "--root", str(dataset.parent / "media"), "--out", str(out),
                 "--workers", "1"]) == 0
    table = capsys.readouterr().out
    assert "video duration (s)" in table and "median / 90th percentile / max" in table
    assert "1 media could not be probed" in table and "2.mp4" in table
    row = next(line.split() for line in table.splitlines() if line.startswith("clips") and "numerical" in line)
    assert row[:4] == ["clips", "numerical", "1", "2"]  # records, then the duration cell "2 / 2 / 2"
    saved = json.loads((out / "stats.json").read_text())
    assert saved["records"] == 6 and len(saved["media_errors"]) == 1
    assert (out / "stats.txt").read_text().strip() == table.strip().split("\nwrote ")[0].strip()
    assert (out / "histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
