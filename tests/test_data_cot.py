"""`framethink data cot`: a tiny teacher annotates the synthetic set, the reward rules filter its outputs, a killed
run resumes without duplicates or losses, an OpenAI-compatible endpoint works as the teacher, several processes
write one result, and `train sft` trains from the output."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framethink.cli import main
from framethink.config import load_config
from framethink.data.check import check_dataset
from framethink.data.cot import (
    CotConfig,
    JournalWriter,
    annotated,
    EndpointTeacher,
    cot_config,
    judge,
    parse_min_accuracy,
    read_journal,
    work_dir,
)
from framethink.data.records import Record, load_records
from framethink.data.synth import write_synthetic_dataset
from framethink.data.video import sample_frames
from framethink.errors import ConfigError, DataError
from framethink.rewards import accuracy_reward, video_r1_format
from framethink.sft.trainer import train_sft

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(autouse=True)
def media_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the CLI's default media cache stays in the test


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """14 records (2 per synthetic task), 4-frame 28x28 clips; their `process` is replaced by the teacher's."""
    out = tmp_path_factory.mktemp("cot_synth")
    write_synthetic_dataset(out, n_train=2, n_test=0, seed=0, num_frames=4, size=28)
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_qwen25_vl_dir) -> Path:
    """The tiny random Qwen2.5-VL after 60 SFT steps on other synthetic clips with the CoT prompt: it writes the
    <think>/<answer> format and answers mostly wrong, so the filter has work on both sides."""
    folder = tmp_path_factory.mktemp("cot_teacher")
    write_synthetic_dataset(folder / "data", n_train=4, n_test=0, seed=1, num_frames=4, size=28,
                            tasks=["color_first", "color"])
    config = load_config(None, [
        f"model.path={tiny_qwen25_vl_dir}", "model.freeze_vision=false", "data.template=video-r1-eval",
        "data.video_max_pixels=784", "data.video_min_pixels=784", f"sft.train_file={folder / 'data' / 'train.json'}",
        "optim.lr=0.003", "optim.prompts_per_step=8", "optim.warmup_steps=5", "optim.weight_decay=0.0",
        "optim.schedule=constant", "run.max_steps=60", "run.save_every=0", "run.report_to=[none]",
        f"run.out={folder / 'run'}"])
    return train_sft(config, quiet=True)


def cot_args(model: Path, synth: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "cot", "--model", str(model), "--in", str(synth / "train.json"), "--out", str(out), *extra]


def journal_lines(out: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(work_dir(out).glob("rank*.jsonl"))
            for line in part.read_text().splitlines()]


# ------------------------------------------------------------------------------------------ the filter


def record(problem_type: str, answer: str, options: list[str] = ()) -> Record:
    return Record(id="7", question="q", options=list(options), problem_type=problem_type, answer=answer,
                  solution=f"<answer>{answer}</answer>", media_kind="text", media=[])


def test_judge_keeps_the_best_passing_output_and_names_the_reason():
    thresholds = CotConfig().min_accuracy
    mc = record("multiple choice", "B", ["A. cat", "B. dog"])
    outputs = ["<answer>B</answer>", "<think>hmm</think> <answer>A</answer>", "<think> it is a dog </think>\n<answer>B. dog</answer>"]
    verdict = judge(outputs, mc, thresholds)
    assert (verdict.kept, verdict.reason, verdict.sample, verdict.accuracy) == (True, "kept", 2, 1.0)
    gold, teacher = (annotated(mc, verdict, Path("."), source) for source in ("gold", "teacher"))
    assert gold["process"] == teacher["process"] == "<think>it is a dog</think>"
    assert gold["solution"] == teacher["solution"] == "<answer>B</answer>"  # the teacher's "B. dog" as its letter
    assert judge(outputs[:2], mc, thresholds).reason == "accuracy"
    assert judge(["<answer>B</answer>", "B", "<think></think><answer>B</answer>"], mc, thresholds).reason == "format"
    # OCR: 1 - WER; 2 of 3 words right is 0.667 >= 0.6 by default, not >= 0.8
    ocr = record("OCR", "stop here now")
    said = ["<think>read</think><answer>stop here please</answer>"]
    assert judge(said, ocr, thresholds).kept
    assert judge(said, ocr, {**thresholds, "OCR": 0.8}).reason == "accuracy"


def test_settings_are_checked_before_anything_runs():
    assert parse_min_accuracy(["0.5", "OCR=0.9,free-form=0.7"]) == {
        "multiple choice": 0.5, "numerical": 0.5, "OCR": 0.9, "free-form": 0.7, "regression": 0.5}
    config = cot_config(["min_accuracy.OCR=0.8", "temperature=0.7"], samples=3)
    assert (config.min_accuracy["OCR"], config.min_accuracy["free-form"], config.temperature) == (0.8, 0.6, 0.7)
    for bad, match in ((["min_accuracy.yes/no=1"], "unknown problem type"), (["min_accuracy.OCR=2"], r"\[0, 1\]"),
                       (["temperature=0"], "greedy"), (["tempreature=1"], "unknown key tempreature")):
        with pytest.raises(ConfigError, match=match):
            cot_config(bad, samples=2)


def test_bad_input_names_file_record_and_field(tmp_path, tiny_qwen25_vl_dir, capsys):
    rows = [{"problem_id": 1, "problem": "Which?", "data_type": "text", "problem_type": "multiple choice",
             "options": ["A. x", "B. y"], "solution": "<answer>B</answer>"},
            {"problem_id": 2, "problem": "How many?", "data_type": "text", "problem_type": "numerical"}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.json"
    assert main(["data", "cot", "--model", str(tiny_qwen25_vl_dir), "--in", str(source), "--out", str(out)]) == 2
    assert f"{source}:2: field 'solution': missing" in capsys.readouterr().err
    assert not out.exists() and not work_dir(out).exists()  # stopped before any model loaded or file was written
    with pytest.raises(DataError, match="solution"):
        load_records(source)


# ------------------------------------------------------------------------------------------ end to end


def test_random_teacher_is_dropped_by_the_format_rule(synth, tiny_qwen25_vl_dir, tmp_path, capsys):
    out = tmp_path / "cot.json"
    assert main(cot_args(tiny_qwen25_vl_dir, synth, out, "max_new_tokens=24", "--batch-size", "7")) == 0
    table = capsys.readouterr().out
    assert "14 records: 0 kept" in table and "drop:format" in table
    assert json.loads(out.read_text()) == []
    summary = json.loads((work_dir(out) / "summary.json").read_text())
    assert summary["total"] == {"format": 14}
    assert sorted(e["index"] for e in journal_lines(out)) == list(range(14))


def test_tiny_teacher_end_to_end_then_sft_cold_start(synth, teacher, tmp_path, capsys):
    out = tmp_path / "cot.json"
    assert main(cot_args(teacher, synth, out, "--samples", "4", "--batch-size", "4", "max_new_tokens=48")) == 0
    table = capsys.readouterr().out
    entries = {e["index"]: e for e in journal_lines(out)}
    kept = [e for e in entries.values() if e["status"] == "kept"]
    dropped = [e for e in entries.values() if e["status"] == "dropped"]
    assert sorted(entries) == list(range(14)) and len(journal_lines(out)) == 14
    assert kept and dropped  # the teacher is often wrong: the filter's work is visible
    assert {e["reason"] for e in dropped} <= {"format", "accuracy"} and "accuracy" in {e["reason"] for e in dropped}
    summary = json.loads((work_dir(out) / "summary.json").read_text())
    assert summary["total"]["kept"] == len(kept)
    assert sum(summary["total"].values()) == 14
    assert f"14 records: {len(kept)} kept" in table

    # the output is the Video-R1 CoT format: it passes `data check` and the reward rules, one row per kept record
    written = load_records(out, root=synth)
    assert [r.id for r in written] == [e["id"] for e in sorted(kept, key=lambda e: e["index"])]
    assert check_dataset(out, root=synth).ok
    originals = {r.id: r for r in load_records(synth / "train.json")}
    for rec in written:
        gold = originals[rec.id]
        assert (rec.solution, rec.options, rec.media) == (gold.solution, gold.options, gold.media)
        target = rec.cot + "\n" + rec.solution
        assert video_r1_format(target) == 1.0 and accuracy_reward(target, gold.answer, gold.problem_type) >= 0.6
        chosen = next(e for e in kept if e["id"] == rec.id)  # the teacher's output: its reasoning, its right answer
        assert rec.cot == "<think>" + re.search(r"<think>\s*(.*?)\s*</think>", chosen["output"], re.DOTALL)[1] + "</think>"
        assert video_r1_format(chosen["output"]) and accuracy_reward(chosen["output"], gold.answer, gold.problem_type) == 1.0

    # re-running a finished run loads no model and writes the same file
    before = out.read_bytes()
    assert main(cot_args(teacher, synth, out, "--samples", "4", "--batch-size", "4", "max_new_tokens=48")) == 0
    assert out.read_bytes() == before and len(journal_lines(out)) == 14
    # ... while other settings on the same output are refused
    assert main(cot_args(teacher, synth, out, "--samples", "2", "max_new_tokens=48")) == 2
    assert "samples" in capsys.readouterr().err

    # the SFT cold start trains from the annotation
    config = load_config(None, [f"model.path={teacher}", f"sft.train_file={out}", f"data.root={synth}",
                                "data.template=video-r1", "data.system=You are a helpful assistant",
                                "optim.prompts_per_step=2", "optim.lr=0.001", "run.max_steps=2", "run.save_every=0",
                                "run.report_to=[none]", f"run.out={tmp_path / 'sft'}"])
    final = train_sft(config, quiet=True)
    logged = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2] and all(np.isfinite(m["loss/sft"]) for m in logged)
    assert (final / "model.safetensors").is_file()


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, tiny_qwen25_vl_dir):
    data = tmp_path / "data"
    write_synthetic_dataset(data, n_train=4, n_test=0, seed=2, num_frames=4, size=28)  # 28 records
    out = tmp_path / "cot.jsonl"
    command = [sys.executable, "-m", "framethink.cli", *cot_args(tiny_qwen25_vl_dir, data, out, "--batch-size", "1",
                                                                    "--samples", "2", "max_new_tokens=64")]
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = work_dir(out) / "rank0.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and run.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be killed: " + run.stderr.read().decode()[-2000:]
    run.send_signal(signal.SIGKILL)
    run.wait()
    run.stderr.close()
    done_before = read_journal(work_dir(out))
    assert 3 <= len(done_before) < 28 and not out.exists()  # no output until every record is done
    with journal.open("ab") as handle:  # what a kill in the middle of a write leaves: a torn last line
        handle.write(b'{"index": 27, "id": "27", "stat')

    assert main(cot_args(tiny_qwen25_vl_dir, data, out, "--batch-size", "4", "--samples", "2", "max_new_tokens=64")) == 0
    lines = journal_lines(out)  # every line parses: the torn one was cut off
    assert sorted(e["index"] for e in lines) == list(range(28))  # each record exactly once
    after = read_journal(work_dir(out))
    assert all(after[index] == entry for index, entry in done_before.items())  # nothing done twice
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["problem_id"] for w in written] == [int(e["id"]) for e in sorted(lines, key=lambda e: e["index"])
                                                 if e["status"] == "kept"]


def test_a_second_run_on_the_same_output_is_refused(synth, tiny_qwen25_vl_dir, tmp_path, capsys):
    out = tmp_path / "cot.json"
    work_dir(out).mkdir()
    holder = JournalWriter(work_dir(out), 0)  # a run that is writing
    try:
        assert main(cot_args(tiny_qwen25_vl_dir, synth, out)) == 2
        assert "another `data cot` run is writing this output" in capsys.readouterr().err
    finally:
        holder.close()
    assert not out.exists()


def test_two_processes_under_torchrun_write_one_result(synth, teacher, tmp_path):
    out = tmp_path / "cot.json"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
         "framethink.cli", *cot_args(teacher, synth, out, "--batch-size", "3", "--samples", "2", "max_new_tokens=32")],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    parts = {p.name: [json.loads(line)["index"] for line in p.read_text().splitlines()]
             for p in work_dir(out).glob("rank*.jsonl")}
    assert sorted(parts) == ["rank0.jsonl", "rank1.jsonl"]
    assert sorted(parts["rank0.jsonl"]) == list(range(0, 14, 2)) and sorted(parts["rank1.jsonl"]) == list(range(1, 14, 2))
    assert run.stdout.count("CoT annotation of") == 1  # process 0 alone assembles and reports
    kept = sorted(e["index"] for e in journal_lines(out) if e["status"] == "kept")
    assert [r["problem_id"] for r in json.loads(out.read_text())] == kept  # synthetic problem ids are the indexes


# ------------------------------------------------------------------------------------------ endpoint teacher


def test_endpoint_request_holds_each_frame_after_its_time(synth):
    teacher = EndpointTeacher("http://127.0.0.1:1/v1", "tiny", cot_config(["max_frames=4"]))
    assert teacher.url == "http://127.0.0.1:1/v1/chat/completions"
    record = load_records(synth / "train.json")[0]
    request = teacher.request(record)
    assert set(request) == {"messages"}  # no frame rate unless asked: hosted APIs refuse unknown fields
    (message,) = request["messages"]
    parts = message["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"] * 4 + ["text"]
    assert [p["text"] for p in parts[:-1:2]] == ["Frame 1 at 0.00s:", "Frame 2 at 0.50s:", "Frame 3 at 1.00s:",
                                                  "Frame 4 at 1.50s:"]
    sent = np.stack([np.array(Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))))
                     for p in parts[1::2]])
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    np.testing.assert_array_equal(sent, sample_frames(record.media[0], max_frames=4).frames)  # lossless
    assert parts[-1]["text"].startswith(record.question) and "between the <think> and </think> tags" in parts[-1]["text"]


def test_endpoint_request_can_carry_the_frames_sampling_rate(synth):
    record = load_records(synth / "train.json")[0]
    for max_frames in (4, 2):
        teacher = EndpointTeacher("http://127.0.0.1:1/v1", "tiny", cot_config([f"max_frames={max_frames}",
                                                                              "send_fps=true"]))
        request = teacher.request(record)
        sampled = sample_frames(record.media[0], max_frames=max_frames)
        assert request["mm_processor_kwargs"] == {"fps": sampled.fps}
        assert len(request["messages"][0]["content"]) == 2 * len(sampled.frames) + 1
    assert sample_frames(record.media[0], max_frames=2).fps == 0.5 * sample_frames(record.media[0], max_frames=4).fps


@pytest.fixture(scope="module")
def served_teacher(teacher):
    """`framethink serve` (OpenAI chat completions) running the teacher on 127.0.0.1; yields the base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "framethink.cli", "serve", "--model", str(teacher), "--port",
                               str(port), "--served-model-name", "teacher", "--max-new-tokens", "48", "--max-samples",
                               "2"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5):
                break
        except OSError:
            assert server.poll() is None, "framethink serve stopped: " + server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "framethink serve did not start"
            time.sleep(0.5)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        server.stderr.close()


def test_openai_endpoint_teacher_against_framethink_serve(synth, served_teacher, tmp_path):
    out = tmp_path / "cot.json"
    assert main(["data", "cot", "--endpoint", served_teacher + "/v1", "--served-model", "teacher", "--in",
                 str(synth / "train.json"), "--out", str(out), "--samples", "2", "--batch-size", "4",
                 "max_new_tokens=48", "send_fps=true"]) == 0  # the server reads the frames' rate
    summary = json.loads((work_dir(out) / "summary.json").read_text())
    assert summary["teacher"] == {"endpoint": served_teacher + "/v1/chat/completions", "served_model": "teacher"}
    entries = journal_lines(out)
    assert sorted(e["index"] for e in entries) == list(range(14))  # every record answered, once
    kept = [e for e in entries if e["status"] == "kept"]
    assert {e["reason"] for e in entries} <= {"kept", "format", "accuracy"} and sum(summary["total"].values()) == 14
    assert [r["problem_id"] for r in json.loads(out.read_text())] == sorted(e["index"] for e in kept)


def test_endpoint_failure_stops_the_run_resumably(synth, tmp_path, capsys):
    out = tmp_path / "cot.json"
    args = ["data", "cot", "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "tiny", "--in",
            str(synth / "train.json"), "--out", str(out), "retries=0", "timeout=5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9/v1/chat/completions failed for" in err and "train.json:[0]" in err
    assert not out.exists() and journal_lines(out) == []
