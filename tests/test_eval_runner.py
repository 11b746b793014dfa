"""Resumable runs, `eval score` reproducing `eval run`, the published table and temporal sensitivity."""
from __future__ import annotations

import json

import pytest
from eval_fixtures import ScriptedAdapter, write_json, write_tempcompass, write_video_r1_file, write_vsibench

import framethink.models
from framethink import __version__
from framethink.cli import main
from framethink.errors import ConfigError
from framethink.eval.benchmarks import load_benchmark
from framethink.eval.predictions import read_predictions
from framethink.eval.runner import RunSettings, item_seed, run_eval
from framethink.models.adapter import Decoding

GREEDY = Decoding(max_new_tokens=16, temperature=0.0, do_sample=False)


def _settings(**changes) -> RunSettings:
    values = dict(model="/m/tiny", frames=4, max_pixels=3136, mode="reason", template="video-r1-eval",
                  frame_order="ordered", decoding=GREEDY)
    return RunSettings(**{**values, **changes})


def _bench(tmp_path, n: int = 10):
    """A record file of n multiple-choice items, gold A for even ids and B for odd ones."""
    records = [{"problem_id": i, "problem": f"Q{i}?", "data_type": "video", "problem_type": "multiple choice",
                "options": ["A. yes", "B. no"], "solution": f"<answer>{'AB'[i % 2]}</answer>", "path": "v.mp4"}
               for i in range(n)]
    (tmp_path / "v.mp4").write_bytes(b"")
    return load_benchmark(str(write_json(tmp_path / "items.json", records)), None)


def _gold(record, _order):
    return f"<think>...</think><answer>{record.answer}</answer>"


def test_interrupted_run_resumes_without_redoing_or_losing_items(tmp_path):
    bench = _bench(tmp_path)
    crashing = ScriptedAdapter(_gold, crash_on_call=2)  # the process is killed during its third batch
    with pytest.raises(KeyboardInterrupt):
        run_eval(crashing, [bench], tmp_path / "run", _settings(), batch_size=3)
    path = tmp_path / "run/predictions.jsonl"
    assert [p["id"] for p in read_predictions(path).lines] == ["0", "1", "2", "3", "4", "5"]  # two whole batches kept

    resumed = ScriptedAdapter(_gold)
    run_eval(resumed, [bench], tmp_path / "run", _settings(), batch_size=3)
    assert resumed.calls == [["6", "7", "8"], ["9"]]  # only the missing items, nothing redone
    lines = read_predictions(path).lines
    assert [p["id"] for p in lines] == [str(i) for i in range(10)]
    assert all(p["output"].endswith(f"<answer>{p['answer']}</answer>") for p in lines)
    assert crashing.seeds["0"] == item_seed("items", "0", 0) and resumed.seeds["9"] == item_seed("items", "9", 0)

    again = ScriptedAdapter(_gold)
    run_eval(again, [bench], tmp_path / "run", _settings(), batch_size=3)
    assert again.calls == []


def test_a_line_cut_by_a_crash_is_generated_again(tmp_path):
    bench = _bench(tmp_path, n=4)
    run_eval(ScriptedAdapter(_gold), [bench], tmp_path / "run", _settings(), batch_size=4)
    path = tmp_path / "run/predictions.jsonl"
    text = path.read_text()
    path.write_text(text[: text.rfind('"output"')])  # the last line lost its end mid-write
    assert [p["id"] for p in read_predictions(path).lines] == ["0", "1", "2"]
    adapter = ScriptedAdapter(_gold)
    run_eval(adapter, [bench], tmp_path / "run", _settings(), batch_size=4)
    assert adapter.calls == [["3"]]
    assert path.read_text() == text


def test_rerun_with_other_settings_is_refused(tmp_path):
    bench = _bench(tmp_path, n=2)
    run_eval(ScriptedAdapter(_gold), [bench], tmp_path / "run", _settings(), batch_size=4)
    with pytest.raises(ConfigError, match=r"written with frames=4 \(this run: 8\)"):
        run_eval(ScriptedAdapter(_gold), [bench], tmp_path / "run", _settings(frames=8))


def test_limit_takes_the_first_items_and_a_larger_limit_adds_the_rest(tmp_path):
    bench = _bench(tmp_path, n=5)
    first = ScriptedAdapter(_gold)
    run_eval(first, [bench], tmp_path / "run", _settings(), batch_size=8, limit=2)
    assert first.calls == [["0", "1"]]
    rest = ScriptedAdapter(_gold)
    run_eval(rest, [bench], tmp_path / "run", _settings(), batch_size=8)
    assert rest.calls == [["2", "3", "4"]]


def test_option_mode_refuses_numeric_questions_before_generating(tmp_path):
    write_vsibench(tmp_path)
    adapter = ScriptedAdapter(_gold)
    with pytest.raises(ConfigError, match="formats only multiple choice questions; benchmark 'vsibench' has regression"):
        run_eval(adapter, [load_benchmark("vsibench", tmp_path)], tmp_path / "run", _settings(mode="option", template="option"))
    assert adapter.calls == [] and not (tmp_path / "run").exists()


TEMPORAL_TASKS = {"shuffled": {"first", "order"}, "reversed": {"first"}}


def _order_sensitive(record, order):
    """Right with ordered frames; wrong on the tasks that need the order when frames are permuted."""
    if record.source in TEMPORAL_TASKS.get(order, set()):
        return "<answer>Z</answer>"
    return f"<answer>{record.answer}</answer>"


def test_eval_run_in_three_frame_orders_and_eval_score_reproduces_it(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_video_r1_file(data / "eval_mvbench.json")  # Video-R1-eval layout: tasks first (ids 1, 3) and last (2, 4, 5)
    write_tempcompass(data)  # released layout: action x2, direction, order
    adapter = ScriptedAdapter(_order_sensitive)
    loads = []
    monkeypatch.setattr(framethink.models, "load_adapter",
                        lambda model, **kw: loads.append((model, kw)) or adapter, raising=False)
    out, model = tmp_path / "out", tmp_path / "Video-R1-7B"
    base = ["eval", "run", "--model", str(model), "--bench", "mvbench,tempcompass", "--data-root", str(data),
            "--out", str(out), "--frames", "16", "--max-pixels", "200704", "--batch-size", "2"]
    assert main(base) == 0
    assert main([*base, "--frame-order", "shuffled"]) == 0
    assert main([*base, "--frame-order", "reversed", "--limit", "2"]) == 0
    run_output = capsys.readouterr().out
    assert loads[0] == (model, {"num_frames": 16, "max_pixels": 200704})

    header = read_predictions(out / "shuffled/predictions.jsonl").settings
    assert header == {"model": str(model.resolve()), "frames": 16, "max_pixels": 200704, "mode": "reason",
                      "template": "video-r1-eval", "frame_order": "shuffled",
                      "decoding": {"max_new_tokens": 1024, "temperature": 0.1, "top_p": 0.001, "do_sample": True},
                      "seed": 0, "min_pixels": None, "preset": None, "framethink_version": __version__}

    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["ordered", "shuffled", "reversed"]
    ordered, shuffled = report["runs"]["ordered"]["benchmarks"], report["runs"]["shuffled"]["benchmarks"]
    def cell(benchmarks: dict, name: str) -> dict:
        return benchmarks[name]["protocols"]["framethink"]

    assert cell(ordered, "mvbench")["score"] == 100.0 and cell(ordered, "tempcompass")["score"] == 100.0
    assert cell(shuffled, "mvbench")["score"] == pytest.approx(60.0)
    assert cell(shuffled, "tempcompass")["score"] == pytest.approx(75.0)
    assert shuffled["mvbench"]["tasks"]["framethink"]["first"]["score"] == 0.0
    assert cell(report["runs"]["reversed"]["benchmarks"], "mvbench")["items"] == 2

    # temporal gaps on the items run in every order: mvbench ids 1 (first) and 2 (last), tempcompass action/0, action/1
    temporal = report["temporal"]["benchmarks"]
    assert temporal["mvbench"]["overall"] == pytest.approx(
        {"items": 2, "ordered": 100.0, "shuffled": 50.0, "reversed": 50.0, "gap_shuffled": 50.0, "gap_reversed": 50.0})
    assert temporal["mvbench"]["tasks"]["first"]["gap_shuffled"] == 100.0
    assert temporal["mvbench"]["tasks"]["last"]["gap_reversed"] == 0.0
    assert temporal["tempcompass"]["overall"]["gap_shuffled"] == 0.0 and list(temporal["tempcompass"]["tasks"]) == ["action"]

    (published,) = report["published"]
    assert published["key"] == "video-r1-7b-16f" and published["protocol"] == "video-r1"
    assert list(published["rows"]) == ["mvbench", "tempcompass"]
    assert published["rows"]["mvbench"] == pytest.approx({"run": 100.0, "published": 62.7, "delta": 37.3})
    assert published["rows"]["tempcompass"] == pytest.approx({"run": 100.0, "published": 72.6, "delta": 27.4})

    markdown = (out / "report.md").read_text()
    assert run_output.endswith(markdown + "\n")
    assert "| mvbench | first | 1 | 100.0 | 0.0 | 0.0 | +100.0 | +100.0 |" in markdown
    assert "| mvbench | 100.0 | 62.7 | +37.3 |" in markdown

    assert main(["eval", "score", str(out)]) == 0
    assert capsys.readouterr().out == markdown + "\n"
    assert main(["eval", "score", str(out / "shuffled/predictions.jsonl"), "--out", str(tmp_path / "rescored")]) == 0
    rescored = json.loads((tmp_path / "rescored/report.json").read_text())
    assert rescored["runs"] == {"shuffled": report["runs"]["shuffled"]}
    assert rescored["temporal"] is None and rescored["published"] == []


def test_a_run_with_other_settings_cannot_join_an_output_folder(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_tempcompass(data)
    adapter = ScriptedAdapter(_order_sensitive)
    monkeypatch.setattr(framethink.models, "load_adapter", lambda model, **kw: adapter, raising=False)
    base = ["eval", "run", "--model", str(tmp_path / "m"), "--bench", "tempcompass", "--data-root", str(data),
            "--out", str(tmp_path / "out")]
    assert main([*base, "--frames", "16"]) == 0
    calls = len(adapter.calls)
    assert main([*base, "--frames", "32", "--frame-order", "shuffled"]) == 2
    assert "differs from the other runs of its folder in frames" in capsys.readouterr().err
    assert len(adapter.calls) == calls  # refused before generating
