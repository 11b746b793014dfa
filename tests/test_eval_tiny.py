"""The tiny Qwen2.5-VL evaluates end to end: every frame order, and a folder holding a corrupt, a missing and a
one-frame video (the failures are listed, the one-frame clip is evaluated, `data check` agrees)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from framethink.cli import main
from framethink.data.check import check_dataset
from framethink.data.clips import FRAME_ORDERS, FrameRule
from framethink.data.synth import write_synthetic_dataset
from framethink.data.video import write_video
from framethink.eval.benchmarks import load_benchmark
from framethink.eval.predictions import read_predictions
from framethink.eval.runner import RunSettings, evaluate, template_for
from framethink.models.adapter import Decoding
from framethink.models.registry import load_adapter
from framethink.models.tiny import build_tiny

GREEDY = Decoding(max_new_tokens=8, temperature=0.0, do_sample=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    checkpoint = build_tiny("qwen2.5-vl", root / "tiny", seed=0)
    return checkpoint, load_adapter(checkpoint, frames=FrameRule(max_frames=4, num_frames=4))


def _settings(checkpoint, adapter, order="ordered") -> RunSettings:
    return RunSettings(model=str(checkpoint), frames=4, max_pixels=None, mode="reason",
                       template=template_for("reason", adapter), frame_order=order, decoding=GREEDY)


def test_tiny_model_evaluates_the_synthetic_test_set_in_every_frame_order(tmp_path, tiny, capsys):
    checkpoint, adapter = tiny
    write_synthetic_dataset(tmp_path / "synth", n_train=0, n_test=2, seed=0, num_frames=4, size=28,
                            tasks=["color_first", "color"])
    bench = load_benchmark(str(tmp_path / "synth/test.json"), None)
    out = tmp_path / "out"
    for order in FRAME_ORDERS:
        report = evaluate(adapter, [bench], out, _settings(checkpoint, adapter, order), batch_size=3)

    assert list(report["runs"]) == list(FRAME_ORDERS)
    for order in FRAME_ORDERS:
        lines = read_predictions(out / order / "predictions.jsonl").lines
        assert sorted(p["id"] for p in lines) == sorted(r.id for r in bench.records)
        assert all(isinstance(p["output"], str) and p["status"] == "ok" for p in lines)
        assert report["runs"][order]["benchmarks"]["test"]["protocols"]["framethink"]["items"] == 4
    temporal = report["temporal"]["benchmarks"]["test"]
    assert temporal["overall"]["items"] == 4 and set(temporal["tasks"]) == {"color_first", "color"}

    # greedy decoding of the same checkpoint reproduces the ordered outputs in a fresh folder
    evaluate(adapter, [bench], tmp_path / "again", _settings(checkpoint, adapter), batch_size=3)
    first = read_predictions(out / "ordered/predictions.jsonl").lines
    again = read_predictions(tmp_path / "again/ordered/predictions.jsonl").lines
    assert {p["id"]: p["output"] for p in first} == {p["id"]: p["output"] for p in again}

    assert main(["eval", "score", str(out)]) == 0
    assert capsys.readouterr().out == (out / "report.md").read_text() + "\n"


def _bad_folder(tmp_path):
    """The synthetic test set plus three items: a truncated (corrupt) video, a missing one and a one-frame one."""
    write_synthetic_dataset(tmp_path / "synth", n_train=0, n_test=1, seed=0, num_frames=4, size=28, tasks=["color"])
    videos = tmp_path / "synth/videos/test"
    frames = np.random.default_rng(0).integers(0, 255, (12, 28, 28, 3), dtype=np.uint8)
    corrupt = write_video(videos / "corrupt.mp4", frames, 4, gop=1)
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])  # header kept, frames lost
    write_video(videos / "one_frame.mp4", frames[:1], 4)
    file = tmp_path / "synth/test.json"
    records = json.loads(file.read_text())
    for i, name in enumerate(("corrupt", "missing", "one_frame")):
        records.append({**records[0], "problem_id": 100 + i, "path": f"./videos/test/{name}.mp4"})
    file.write_text(json.dumps(records))
    return file


def test_bad_items_are_recorded_listed_and_scored_wrong_and_data_check_agrees(tmp_path, tiny):
    checkpoint, adapter = tiny
    file = _bad_folder(tmp_path)
    bench = load_benchmark(str(file), None)
    report = evaluate(adapter, [bench], tmp_path / "out", _settings(checkpoint, adapter), batch_size=4)

    lines = {p["id"]: p for p in read_predictions(tmp_path / "out/ordered/predictions.jsonl").lines}
    assert lines["102"]["status"] == "ok"  # the one-frame clip: its frame repeated to fill the temporal patch
    assert lines["100"]["status"] == "error" and "corrupt.mp4" in lines["100"]["reason"]
    assert lines["101"]["status"] == "error" and "file not found" in lines["101"]["reason"]
    run = report["runs"]["ordered"]
    assert [(f["id"], f["reason"][:22]) for f in run["failures"]] == [
        ("100", "cannot prepare the ite"), ("101", "cannot prepare the ite")]
    cell = run["benchmarks"]["test"]["protocols"]["framethink"]
    assert (cell["items"], cell["errors"]) == (1 + 3, 2)
    markdown = (tmp_path / "out/report.md").read_text()
    assert "### Failed items (ordered): 2, scored as wrong" in markdown and "| test | 101 | cannot prepare" in markdown
    scores = [json.loads(line) for line in (tmp_path / "out/item_scores.jsonl").read_text().splitlines()]
    assert {(s["id"], s["status"]) for s in scores if s["id"] in ("100", "101")} == {("100", "error"), ("101", "error")}

    # `data check` rejects exactly the items evaluation could not prepare
    check = check_dataset(file)
    assert sorted(e.where for e in check.errors) == sorted(
        f"[{i}]" for i, r in enumerate(json.loads(file.read_text())) if r["problem_id"] in (100, 101))


def test_strict_exits_non_zero_and_a_fixed_item_runs_again(tmp_path, tiny, monkeypatch, capsys):
    import framethink.models

    checkpoint, adapter = tiny
    file = _bad_folder(tmp_path)
    monkeypatch.setattr(framethink.models, "load_adapter", lambda model, **kw: adapter, raising=False)
    args = ["eval", "run", "--model", str(checkpoint), "--bench", str(file), "--out", str(tmp_path / "out"),
            "--frames", "4", "--temperature", "0", "--max-new-tokens", "8"]
    assert main(args) == 0  # failures are reported, not fatal
    assert "2 items failed and were scored as wrong" in capsys.readouterr().err
    assert main([*args, "--strict"]) == 1  # the rerun tries the two again; still failing
    write_video(tmp_path / "synth/videos/test/missing.mp4", np.zeros((4, 28, 28, 3), np.uint8), 4)
    assert main([*args, "--strict"]) == 1  # the corrupt one still fails
    lines = read_predictions(tmp_path / "out/ordered/predictions.jsonl").lines
    assert [p["id"] for p in lines if p["status"] == "error"] == ["100"]
    assert len(lines) == 4
