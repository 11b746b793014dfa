"""`framethink data mix`: exact quotas and ratios, seeded and deterministic, dedup by media content and normalised
question, decontamination against evaluation benchmarks with every removal listed, and nothing half-written."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from framethink.cli import main
from framethink.data.mix import build_mix, largest_remainder, load_mix_spec, normalized_question, sidecar
from framethink.data.records import load_records
from framethink.data.video import write_video
from framethink.errors import ConfigError, DataError

TYPES = ("multiple choice", "numerical", "OCR")


@pytest.fixture(autouse=True)
def media_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def image(path: Path, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path.name


def row(pid: int, question: str, ptype: str, path: str, source: str, kind: str = "image") -> dict:
    answer = {"multiple choice": "A", "numerical": "3", "OCR": "stop"}[ptype]
    options = ["A. yes", "B. no"] if ptype == "multiple choice" else []
    return {"problem_id": pid, "problem": question, "data_type": kind, "problem_type": ptype, "options": options,
            "solution": f"<answer>{answer}</answer>", "path": path, "data_source": source}


@pytest.fixture
def pool(tmp_path) -> Path:
    """images.json: 60 distinct images, 20 per problem type, sources chart/* and ocr/*; videos.jsonl: 6 clips."""
    folder = tmp_path / "pool"
    rows = [row(i, f"Question {i}?", TYPES[i % 3], image(folder / "img" / f"{i}.png", i),
                "ocr/signs" if TYPES[i % 3] == "OCR" else f"chart/{i % 2}") for i in range(60)]
    for r in rows:
        r["path"] = f"./img/{r['path']}"
    (folder / "images.json").write_text(json.dumps(rows))
    (folder / "clips").mkdir()
    videos = []
    for i in range(6):
        frames = np.full((4, 16, 16, 3), 40 * i, np.uint8)
        write_video(folder / "clips" / f"{i}.mp4", frames, 2)
        videos.append(row(100 + i, f"What happens in clip {i}?", "multiple choice", f"./clips/{i}.mp4",
                          "video/general", "video"))
    (folder / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    return folder


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "mix.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def composition(out: Path) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for record in load_records(out):
        counts.setdefault(record.source.split("/")[0], Counter())[record.problem_type] += 1
    return counts


def test_largest_remainder_is_exact():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    # 263 * w / 262: 116.443, 15.057, 21.080, 16.061, 37.141, 37.141, 20.076; the one left over goes to .443
    assert largest_remainder(263, [116, 15, 21, 16, 37, 37, 20]) == [117, 15, 21, 16, 37, 37, 20]
    assert sum(largest_remainder(1000, [0.3, 0.3, 0.4])) == 1000
    assert normalized_question("  What's the   COLOUR, of it?") == normalized_question("what s the colour of it")


def test_quotas_and_ratios_are_exact_and_seeded(pool, capsys):
    spec = {"seed": 3, "total": 24, "subsets": [
        {"name": "video", "files": ["videos.jsonl"], "count": 4},
        {"name": "charts", "files": ["images.json"], "data_source": ["chart/*"], "ratio": 3,
         "problem_types": {"multiple choice": 2, "numerical": 1}},
        {"name": "ocr", "files": ["images.json"], "problem_type": ["OCR"], "ratio": 1},
    ]}
    out = pool / "out" / "mix.json"
    assert main(["data", "mix", "--spec", str(write_spec(pool, spec)), "--out", str(out), "--workers", "1"]) == 0
    table = capsys.readouterr().out
    # the video subset's count is its own; the 20 left of the total go 3:1 -> charts 15 (10 MC + 5 numerical), ocr 5
    assert composition(out) == {"video": Counter({"multiple choice": 4}),
                                "chart": Counter({"multiple choice": 10, "numerical": 5}), "ocr": Counter({"OCR": 5})}
    total_row = next(line.split() for line in table.splitlines() if line.startswith("total"))
    assert "charts" in table and total_row[-2:] == ["24", "100.0%"]
    records = load_records(out)
    assert all(r.media[0].is_file() for r in records)  # paths are rewritten relative to the output's folder
    assert json.loads(out.read_text())[0]["path"].startswith("../")
    assert sidecar(out, ".composition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ocr" in sidecar(out, ".composition.txt").read_text()

    again = pool / "again.json"
    build_mix(pool / "mix.yaml", again)
    assert [r["problem_id"] for r in json.loads(again.read_text())] == [r.id and int(r.id) for r in records]
    spec["seed"] = 4
    other = pool / "other.json"
    build_mix(write_spec(pool, spec), other)
    assert composition(other) == composition(out)
    assert {r["problem_id"] for r in json.loads(other.read_text())} != {int(r.id) for r in records}


def test_dedup_by_media_content_and_normalised_question(pool):
    rows = json.loads((pool / "images.json").read_text())
    shutil.copy(pool / "img" / "0.png", pool / "img" / "copy.png")
    extra = [
        {**rows[0], "problem_id": 900, "path": "./img/copy.png", "problem": "  question 0 "},  # same content and question
        {**rows[0], "problem_id": 901, "path": "./img/copy.png", "problem": "Question 0 again?"},  # other question
        {**rows[3], "problem_id": 902, "problem": "QUESTION 3"},  # same file and question
    ]
    (pool / "more.json").write_text(json.dumps(extra))
    spec = {"subsets": [{"name": "all", "files": ["images.json", "more.json"]}]}
    out = pool / "mix.json"
    result = build_mix(write_spec(pool, spec), out)
    ids = {int(r.id) for r in load_records(out)}
    assert ids == set(range(60)) | {901}
    removed = [json.loads(line) for line in sidecar(out, ".removed.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in removed] == [("900", "duplicate"), ("902", "duplicate")]
    assert removed[0]["detail"].endswith("images.json:[0]") and result.duplicates == {"all": 2}

    spec["dedup"] = False
    build_mix(write_spec(pool, spec), out)
    assert len(load_records(out)) == 63


def test_decontamination_against_benchmarks_under_a_data_root(pool, capsys):
    evals = pool / "eval"
    evals.mkdir()
    shutil.copy(pool / "clips" / "2.mp4", evals / "same_content.mp4")  # a training clip under another name
    write_video(evals / "unique.mp4", np.full((4, 16, 16, 3), 250, np.uint8), 2)
    items = [row(1, "Which way does it go?", "multiple choice", "./same_content.mp4", "task", "video"),
             row(2, "what happens in clip 4", "multiple choice", "./unique.mp4", "task", "video"),
             row(3, "Fine?", "multiple choice", "./unique.mp4", "task", "video")]
    (evals / "eval_mvbench.json").write_text(json.dumps(items))
    spec = {"decontaminate": {"data_root": "eval"}, "subsets": [{"name": "video", "files": ["videos.jsonl"]}]}
    out = pool / "mix.json"
    assert main(["data", "mix", "--spec", str(write_spec(pool, spec)), "--out", str(out), "--workers", "1"]) == 0
    assert "decontaminated against: mvbench" in capsys.readouterr().out
    assert sorted(int(r.id) for r in load_records(out)) == [100, 101, 103, 105]
    removed = {r["id"]: r for r in map(json.loads, sidecar(out, ".removed.jsonl").read_text().splitlines())}
    assert removed["102"]["reason"] == "same video" and "mvbench item 1" in removed["102"]["detail"]
    assert removed["104"]["reason"] == "same question" and "mvbench item 2" in removed["104"]["detail"]

    spec["decontaminate"]["match"] = ["question"]  # content is then not compared
    build_mix(write_spec(pool, spec), out)
    assert sorted(int(r.id) for r in load_records(out)) == [100, 101, 102, 103, 105]
    spec["decontaminate"]["benchmarks"] = ["videomme"]
    with pytest.raises(DataError, match="videomme"):
        build_mix(write_spec(pool, spec), out)


def test_bad_specs_and_records_fail_without_touching_the_output(pool):
    out = pool / "mix.json"
    out.write_text("previous\n")
    cases = [
        ({"subsets": [{"name": "v", "files": ["videos.jsonl"], "count": 7}]}, ConfigError,
         "subset 'v' asks for 7 records, but only 6"),
        ({"subsets": [{"name": "v", "files": ["videos.jsonl"], "cuont": 7}]}, ConfigError, r"unknown key subsets\[0\].cuont"),
        ({"subsets": [{"name": "v", "files": ["videos.jsonl"], "ratio": 1}]}, ConfigError, "ratios need the spec's total"),
        ({"subsets": [{"name": "v", "files": ["missing.json"]}]}, DataError, "missing.json"),
        ({"subsets": [{"name": "i", "files": ["images.json"], "problem_types": {"yes/no": 1}}]}, ConfigError,
         "unknown problem type 'yes/no'"),
    ]
    for spec, error, message in cases:
        with pytest.raises(error, match=message):
            build_mix(write_spec(pool, spec), out)
    rows = json.loads((pool / "images.json").read_text())
    rows[5]["options"] = "A. yes"
    (pool / "broken.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"broken.json:\[5\]: field 'options'"):
        build_mix(write_spec(pool, {"subsets": [{"name": "b", "files": ["broken.json"]}]}), out)
    assert out.read_text() == "previous\n" and not sidecar(out, ".composition.txt").exists()


def test_the_published_video_r1_composition():
    spec, _ = load_mix_spec(Path(__file__).parents[1] / "recipes" / "mixes" / "video-r1-260k.yaml")
    counts = {s.name: s.count for s in spec.subsets}
    assert counts == {"General (video)": 116_000, "General (image)": 15_000, "Chart": 21_000, "OCR": 16_000,
                      "Math": 37_000, "Knowledge": 37_000, "Spatial": 20_000}
    assert sum(counts.values()) == 262_000
