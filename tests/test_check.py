"""`framethink data check` (SPEC 1): every planted fault is reported with its line and field."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from PIL import Image

from framethink.cli import main
from framethink.data.check import check_dataset


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
