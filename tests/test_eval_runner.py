"""Resumable runs, `eval score` reproducing `eval run`, the published table and temporal sensitivity."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import zlib
from types import SimpleNamespace

import pytest
import torch
from eval_fixtures import ScriptedAdapter, write_json, write_tempcompass, write_video_r1_file, write_vsibench

import framethink.models
from framethink import __version__
from framethink.cli import main
from framethink.errors import ConfigError
from framethink.eval.benchmarks import load_benchmark
from framethink.eval.predictions import read_predictions
from framethink.eval.lock import LOCK_FILE
from framethink.eval.runner import RunSettings, evaluate, item_seed, run_eval
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


# ---------------------------------------------------------------------------------------------
# Failures of single items, the output-folder lock, protocols and presets.


class _Flaky(ScriptedAdapter):
    """Raises in generation for the items in `broken` (a batch holding one fails as a whole), and gives prompts
    of `lengths[id]` tokens under a model context of 64."""

    def __init__(self, broken=(), lengths=None):
        super().__init__(_gold)
        self.broken, self.lengths = set(broken), lengths or {}
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))

    def encode(self, record, **kw):
        prompt = super().encode(record, **kw)
        prompt.inputs["input_ids"] = torch.zeros(1, self.lengths.get(record.id, 8), dtype=torch.long)
        return prompt

    def generate_texts(self, prompts, decoding):
        if any(p.record.id in self.broken for p in prompts):
            raise RuntimeError(f"CUDA error on {[p.record.id for p in prompts]}")
        return super().generate_texts(prompts, decoding)


def test_an_exception_in_the_model_or_a_prompt_too_long_fails_only_its_item(tmp_path):
    bench = _bench(tmp_path, n=6)
    adapter = _Flaky(broken={"2"}, lengths={"4": 60})
    run_eval(adapter, [bench], tmp_path / "run", _settings(), batch_size=3)
    lines = {p["id"]: p for p in read_predictions(tmp_path / "run/predictions.jsonl").lines}
    assert [i for i, p in lines.items() if p["status"] == "error"] == ["2", "4"]
    assert lines["2"]["reason"] == "generation failed: RuntimeError: CUDA error on ['2']"
    assert lines["4"]["reason"] == ("cannot prepare the item: ConfigError: the prompt has 60 tokens; with "
                                    "max_new_tokens 16 that exceeds the model's context of 64")
    assert all(lines[i]["output"].endswith(f"<answer>{lines[i]['answer']}</answer>") for i in ("0", "1", "3", "5"))
    assert adapter.calls == [["0"], ["1"], ["3", "5"]]  # batch [0 1 2] failed (not recorded), then one by one


def _blocking_adapter(started: threading.Event, release: threading.Event) -> ScriptedAdapter:
    def answer(record, order):
        started.set()
        assert release.wait(30)
        return _gold(record, order)
    return ScriptedAdapter(answer)


def test_a_second_run_on_a_folder_being_written_is_refused(tmp_path):
    bench = _bench(tmp_path, n=2)
    started, release = threading.Event(), threading.Event()
    first = threading.Thread(target=evaluate, args=(_blocking_adapter(started, release), [bench], tmp_path / "out",
                                                    _settings()))
    first.start()
    try:
        assert started.wait(30)
        for settings in (_settings(), _settings(frame_order="shuffled")):  # the same file, or another of the folder
            second = ScriptedAdapter(_gold)
            with pytest.raises(ConfigError, match=rf"{tmp_path / 'out'} is being written by another evaluation "
                                                  rf"\(process {os.getpid()} on "):
                evaluate(second, [bench], tmp_path / "out", settings)
            assert second.calls == []
    finally:
        release.set()
        first.join()
    assert [p["id"] for p in read_predictions(tmp_path / "out/ordered/predictions.jsonl").lines] == ["0", "1"]
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # released at the end
    evaluate(ScriptedAdapter(_gold), [bench], tmp_path / "out", _settings(frame_order="shuffled"))


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    bench = _bench(tmp_path, n=2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                          "started": "2026-01-01T00:00:00"}))
    evaluate(ScriptedAdapter(_gold), [bench], tmp_path / "out", _settings())
    assert len(read_predictions(tmp_path / "out/ordered/predictions.jsonl").lines) == 2
    assert not (tmp_path / "out" / LOCK_FILE).exists()


ALL_PROTOCOLS = "framethink,video-r1,official,lmms-eval,tinyllava"


def _varied(record, order):
    """Outputs in the forms the protocols disagree on."""
    forms = ["<answer>{}</answer>", "({})", "{}", "The answer is ({})", "<think>x</think> {}", "<answer>{}</answer>x"]
    gold = record.answer if record.problem_type == "multiple choice" else f"{float(record.answer) * 0.95:g}"
    return forms[zlib.crc32(f"{record.id}{order}".encode()) % len(forms)].format(gold)


def test_eval_score_reproduces_eval_run_under_every_protocol(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_tempcompass(data)
    write_vsibench(data)
    write_video_r1_file(data / "eval_mvbench.json")
    adapter = ScriptedAdapter(_varied)
    monkeypatch.setattr(framethink.models, "load_adapter", lambda model, **kw: adapter, raising=False)
    out = tmp_path / "out"
    base = ["eval", "run", "--model", str(tmp_path / "m"), "--bench", "mvbench,tempcompass,vsibench",
            "--data-root", str(data), "--out", str(out), "--protocol", ALL_PROTOCOLS]
    assert main(base) == 0
    assert main([*base, "--frame-order", "reversed"]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert list(report["protocols"]) == ALL_PROTOCOLS.split(",")
    cells = report["runs"]["ordered"]["benchmarks"]["vsibench"]["protocols"]
    assert {p: c["items"] for p, c in cells.items()} == {"framethink": 9, "video-r1": 9, "official": 9,
                                                          "lmms-eval": 9, "tinyllava": 6}  # no numeric rule

    assert main(["eval", "score", str(out / "ordered/predictions.jsonl"), str(out / "reversed/predictions.jsonl"),
                 "--protocol", ALL_PROTOCOLS, "--out", str(tmp_path / "rescored")]) == 0
    assert json.loads((tmp_path / "rescored/report.json").read_text()) == report
    assert (tmp_path / "rescored/item_scores.jsonl").read_text() == (out / "item_scores.jsonl").read_text()
    assert (tmp_path / "rescored/report.md").read_text() == (out / "report.md").read_text()

    items = [json.loads(line) for line in (out / "item_scores.jsonl").read_text().splitlines()]
    n_items = 5 + 4 + 9
    assert len(items) == 2 * (n_items * 4 + (n_items - 5))  # two orders; tinyllava skips the 5 numeric items
    assert set(items[0]) == {"benchmark", "id", "frame_order", "protocol", "answer", "score", "status"}
    assert {i["status"] for i in items} <= {"scored", "unparsable", "needs_judge", "error"}
    judged = [i for i in items if i["status"] == "needs_judge"]
    assert judged and all(i["benchmark"] == "tempcompass" and i["protocol"] in ("official", "lmms-eval")
                          for i in judged)


def test_presets_set_everything_and_flags_override_them(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_video_r1_file(data / "eval_mvbench.json")
    adapter = ScriptedAdapter(_gold)
    loads = []
    monkeypatch.setattr(framethink.models, "load_adapter",
                        lambda model, **kw: loads.append(kw) or adapter, raising=False)
    model = tmp_path / "Video-R1-7B"
    base = ["eval", "run", "--model", str(model), "--bench", "mvbench", "--data-root", str(data)]
    assert main([*base, "--out", str(tmp_path / "a"), "--preset", "video-r1-32f"]) == 0
    assert loads[-1] == {"num_frames": 32, "max_pixels": 200704, "video_min_pixels": 100352}
    header = read_predictions(tmp_path / "a/ordered/predictions.jsonl").settings
    assert header == {"model": str(model.resolve()), "frames": 32, "max_pixels": 200704, "min_pixels": 100352,
                      "mode": "reason", "template": "video-r1-eval", "frame_order": "ordered",
                      "decoding": {"max_new_tokens": 1024, "temperature": 0.1, "top_p": 0.001, "do_sample": True},
                      "seed": 0, "preset": "video-r1-32f", "framethink_version": __version__}
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert list(report["protocols"]) == ["video-r1"]
    (published,) = report["published"]
    assert (published["key"], published["protocol"]) == ("video-r1-7b-32f", "video-r1")
    assert published["rows"]["mvbench"]["published"] == 63.9
    markdown = capsys.readouterr().out
    assert "### Video-R1-7B, 32 frames (Video-R1 paper, Table 1), measured under `video-r1`" in markdown
    assert "preset video-r1-32f · model" in markdown

    assert main([*base, "--out", str(tmp_path / "b"), "--preset", "video-r1-32f", "--frames", "16",
                 "--temperature", "0", "--max-pixels", "50176", "--protocol", "official,video-r1"]) == 0
    assert loads[-1] == {"num_frames": 16, "max_pixels": 50176, "video_min_pixels": 100352}
    header = read_predictions(tmp_path / "b/ordered/predictions.jsonl").settings
    assert (header["frames"], header["max_pixels"], header["decoding"]["do_sample"], header["preset"]) == (
        16, 50176, False, "video-r1-32f")
    assert list(json.loads((tmp_path / "b/report.json").read_text())["protocols"]) == ["official", "video-r1"]

    assert main([*base, "--out", str(tmp_path / "c"), "--preset", "tinyllava"]) == 0
    assert loads[-1] == {"num_frames": 16}  # TinyLLaVA-Video keeps its own 384x384 frames
    header = read_predictions(tmp_path / "c/ordered/predictions.jsonl").settings
    assert (header["template"], header["decoding"]["temperature"], header["decoding"]["max_new_tokens"]) == (
        "tinyllava-r1", 1.0, 1024)


def test_the_command_line_offers_every_preset():
    from framethink.cli import build_parser
    from framethink.eval.presets import PRESETS

    evaluation = next(a for a in build_parser()._subparsers._group_actions[0].choices["eval"]._subparsers._group_actions)
    run = evaluation.choices["run"]
    (preset,) = [a for a in run._actions if a.dest == "preset"]
    assert list(preset.choices) == list(PRESETS)
