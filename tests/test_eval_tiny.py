"""The tiny Qwen2.5-VL evaluates end to end on the synthetic test set in all three frame orders."""
from __future__ import annotations

from framethink.cli import main
from framethink.data.synth import write_synthetic_dataset
from framethink.eval.benchmarks import load_benchmark
from framethink.eval.predictions import read_predictions
from framethink.eval.runner import RunSettings, evaluate, template_for
from framethink.data.clips import FRAME_ORDERS
from framethink.models.adapter import Decoding
from framethink.data.clips import FrameRule
from framethink.models.registry import load_adapter
from framethink.models.tiny import build_tiny


def test_tiny_model_evaluates_the_synthetic_test_set_in_every_frame_order(tmp_path, capsys):
    write_synthetic_dataset(tmp_path / "synth", n_train=0, n_test=2, seed=0, num_frames=4, size=28,
                            tasks=["color_first", "color"])
    checkpoint = build_tiny("qwen2.5-vl", tmp_path / "tiny", seed=0)
    adapter = load_adapter(checkpoint, frames=FrameRule(max_frames=4, num_frames=4))
    bench = load_benchmark(str(tmp_path / "synth/test.json"), None)
    out = tmp_path / "out"
    for order in FRAME_ORDERS:
        settings = RunSettings(model=str(checkpoint), frames=4, max_pixels=None, mode="reason",
                               template=template_for("reason", adapter), frame_order=order,
                               decoding=Decoding(max_new_tokens=8, temperature=0.0, do_sample=False))
        report = evaluate(adapter, [bench], out, settings, batch_size=3)

    assert list(report["runs"]) == list(FRAME_ORDERS)
    for order in FRAME_ORDERS:
        lines = read_predictions(out / order / "predictions.jsonl").lines
        assert sorted(p["id"] for p in lines) == sorted(r.id for r in bench.records)
        assert all(isinstance(p["output"], str) for p in lines)
        assert report["runs"][order]["benchmarks"]["test"]["items"] == 4
    temporal = report["temporal"]["benchmarks"]["test"]
    assert temporal["overall"]["items"] == 4 and set(temporal["tasks"]) == {"color_first", "color"}

    # greedy decoding of the same checkpoint reproduces the ordered outputs in a fresh folder
    settings = RunSettings(model=str(checkpoint), frames=4, max_pixels=None, mode="reason",
                           template=template_for("reason", adapter), frame_order="ordered",
                           decoding=Decoding(max_new_tokens=8, temperature=0.0, do_sample=False))
    evaluate(adapter, [bench], tmp_path / "again", settings, batch_size=3)
    first = read_predictions(out / "ordered/predictions.jsonl").lines
    again = read_predictions(tmp_path / "again/ordered/predictions.jsonl").lines
    assert {p["id"]: p["output"] for p in first} == {p["id"]: p["output"] for p in again}

    assert main(["eval", "score", str(out)]) == 0
    assert capsys.readouterr().out == (out / "report.md").read_text() + "\n"
