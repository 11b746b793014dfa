"""`framethink data check`: every planted fault is reported with its line and field; the decode check runs over
processes, writes the bad records as JSON lines, and a re-check skips unchanged media."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from framethink.cli import main
from framethink.data.check import check_dataset
from framethink.data.mediacache import MIN_FILES_PER_WORKER, MediaCache


def write_mp4(path: Path, frames: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def mc(path: str, **kwargs) -> dict:
    row = {"problem_id": 1, "problem": "Which colour comes first?", "data_type": "video",
           "problem_type": "multiple choice", "options": ["A. red", "B. blue"], "solution": "<answer>A</answer>",
           "path": path, "data_source": "synthetic/colours"}
    return {**row, **kwargs}


@pytest.fixture(autouse=True)
def media_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the CLI's default media cache stays in the test


def normalised(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


def test_planted_faults_are_all_reported(tmp_path, capsys):
    write_mp4(tmp_path / "clips" / "good.mp4")
    full = write_mp4(tmp_path / "clips" / "cut.mp4").read_bytes()
    (tmp_path / "clips" / "cut.mp4").write_bytes(full[: len(full) // 2])
    write_png(tmp_path / "img" / "a.png")
    lines = [
        json.dumps(mc("./clips/good.mp4")),
        '{"problem_id": 2, "problem": ',  # unparsable
        json.dumps(mc("./clips/missing.mp4")),
        json.dumps(mc("clips/cut.mp4")),
        json.dumps(mc("clips/good.mp4", solution="<answer>C</answer>")),  # answer outside its options
        json.dumps(mc("clips/good.mp4", problem_type="yes/no")),
        json.dumps({"problem_id": 7, "problem": "How many?", "data_type": "image", "problem_type": "numerical",
                    "solution": "<answer>3</answer>", "path": "img/a.png"}),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")

    report = check_dataset(path)
    assert not report.ok
    assert [(e.file, e.where, e.field) for e in report.errors] == [
        (str(path), "2", "<json>"), (str(path), "3", "path"), (str(path), "4", "path"),
        (str(path), "5", "solution"), (str(path), "6", "problem_type")]
    assert report.errors[1].reason.endswith("missing.mp4: no such file")
    assert (report.good, report.bad) == (2, 5)

    assert main(["data", "check", str(path)]) == 1
    out = normalised(capsys.readouterr().out)
    assert "rows 7 good 2 bad 5" in out
    for where, field in (("2", "<json>"), ("3", "path"), ("4", "path"), ("5", "solution"), ("6", "problem_type")):
        assert any(line.startswith(f"{path}:{where} {field} ") for line in out), (where, field)


def test_clean_dataset_passes_with_counts(tmp_path, capsys):
    media = tmp_path / "media"
    write_mp4(media / "v1.mp4")
    write_mp4(media / "v2.mp4", frames=3)
    write_png(media / "p.png")
    rows = [
        mc("./v1.mp4"),
        mc("v2.mp4", problem_id=2, solution="<answer>B</answer>"),
        {"problem_id": 3, "problem": "How many?", "data_type": "image", "problem_type": "numerical", "options": [],
         "solution": "<answer>2</answer>", "path": "p.png"},
        {"problem_id": 4, "problem": "Say hi.", "problem_type": "free-form", "solution": "<answer>hi</answer>"},
    ]
    path = tmp_path / "data" / "eval.json"
    path.parent.mkdir()
    path.write_text(json.dumps(rows))

    assert main(["data", "check", str(path), "--root", str(media)]) == 0
    out = normalised(capsys.readouterr().out)
    assert "rows 4 good 4 bad 0" in out
    for line in ("video 2", "image 1", "text 1", "multiple choice 2", "numerical 1", "free-form 1",
                 "synthetic/colours 2", "(none) 2"):
        assert line in out, line
    assert not any("faults" in line for line in out)

    # without --root the media resolve against the file's folder, where they are not
    assert main(["data", "check", str(path)]) == 1
    assert sum("no such file" in line for line in normalised(capsys.readouterr().out)) == 3


def clip_rows(folder: Path, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        write_mp4(folder / f"{i}.mp4", frames=3)
        rows.append(mc(f"{i}.mp4", problem_id=i))
    return rows


def test_parallel_check_equals_the_serial_one_and_writes_the_bad_records(tmp_path, capsys):
    rows = clip_rows(tmp_path, 34)  # two files missing or broken, enough left for two workers
    assert 32 >= 2 * MIN_FILES_PER_WORKER
    (tmp_path / "3.mp4").write_bytes(b"not a video")
    (tmp_path / "5.mp4").unlink()
    rows.append(mc("0.mp4", problem_id=34, options="A. red"))  # a schema fault next to media faults
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    serial, parallel = check_dataset(path), check_dataset(path, workers=2)
    faults = [(e.where, e.field, e.reason) for e in serial.errors]
    assert faults == [(e.where, e.field, e.reason) for e in parallel.errors]
    assert [(w, f) for w, f, _ in faults] == [("4", "path"), ("6", "path"), ("35", "options")]
    assert (parallel.good, parallel.bad, parallel.media_files) == (32, 3, 34)

    report = tmp_path / "bad.jsonl"
    assert main(["data", "check", str(path), "--workers", "1", "--no-cache", "--report", str(report)]) == 1
    assert "3 bad records written to" in capsys.readouterr().out
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(b["where"], b["id"], [f["field"] for f in b["faults"]]) for b in lines] == [
        ("4", "3", ["path"]), ("6", "5", ["path"]), ("35", None, ["options"])]
    assert lines[1]["faults"][0]["reason"].endswith("5.mp4: no such file") and lines[0]["file"] == str(path)


def test_a_recheck_skips_unchanged_media(tmp_path):
    rows = clip_rows(tmp_path / "media", 6)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows))
    cache = MediaCache(tmp_path / "cache.sqlite")

    first = check_dataset(path, root=tmp_path / "media", cache=cache, workers=2)
    assert first.ok and (first.media_files, first.media_cached) == (6, 0)
    again = check_dataset(path, root=tmp_path / "media", cache=MediaCache(tmp_path / "cache.sqlite"))
    assert again.ok and again.media_cached == 6  # read back from the file by a new process's cache

    broken = tmp_path / "media" / "2.mp4"
    broken.write_bytes(broken.read_bytes()[:40])  # changed size: checked again, and now it fails
    write_mp4(tmp_path / "media" / "4.mp4", frames=5)  # rewritten: new size and mtime
    after = check_dataset(path, root=tmp_path / "media", cache=cache)
    assert after.media_cached == 4 and [e.where for e in after.errors] == ["[2]"]
    assert check_dataset(path, root=tmp_path / "media", cache=cache).media_cached == 6  # the failure is cached too


def test_check_benchmark_runs(tmp_path):
    from benchmarks import bench_data_check

    result = bench_data_check.run(tmp_path, clips=6, workers=2)
    assert set(result["seconds"]) == {"one_process", "2_processes", "recheck_from_cache"}


def test_a_frame_folder_is_a_video(tmp_path):
    for i in range(3):
        write_png(tmp_path / "frames" / f"{i:05d}.png")
    (tmp_path / "empty").mkdir()
    path = tmp_path / "train.json"
    path.write_text(json.dumps([mc("frames"), mc("empty", problem_id=2), mc("frames", problem_id=3, data_type="image")]))
    report = check_dataset(path, workers=2)
    assert [(e.where, e.field) for e in report.errors] == [("[1]", "path"), ("[2]", "path")]
    assert "holds no" in report.errors[0].reason and "not a regular file" in report.errors[1].reason
