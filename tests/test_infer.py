"""`framethink infer`: the reasoning streams token by token through the adapters' per-token hook, the streamed text
is the final text, the frame times follow the frame order, for every model family."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from framethink.cli import main
from framethink.data.video import write_video
from framethink.errors import ConfigError
from framethink.infer import ask, decoding_settings, option_list, question_record, run_infer
from framethink.models import load_adapter
from framethink.models.registry import tiny_archs

ARCHS = tuple(tiny_archs())  # every model family


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("infer_models")
    for arch in ARCHS:
        assert main(["model", "tiny", "--arch", arch, "--out", str(root / arch)]) == 0
    return {arch: root / arch for arch in ARCHS}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """2 s at 8 fps: red for the first second, blue for the second."""
    frames = np.zeros((16, 28, 28, 3), np.uint8)
    frames[:8, ..., 0] = 255
    frames[8:, ..., 2] = 255
    return write_video(tmp_path_factory.mktemp("infer_clip") / "clip.mp4", frames, 8)


class Chunks(io.StringIO):
    """A terminal that keeps every write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return super().write(text)


def test_options_are_lettered_once():
    assert option_list(["red", " blue "]) == ["A. red", "B. blue"]
    assert option_list(["A. red", "B. blue"]) == ["A. red", "B. blue"]
    with pytest.raises(ConfigError, match="letter every option"):
        option_list(["A. red", "blue"])
    record = question_record("x.mp4", "video", "Which colour comes first?", ["red", "blue"])
    assert record.problem_type == "multiple choice" and record.options == ["A. red", "B. blue"]
    assert question_record("x.jpg", "image", "What is it?").problem_type == "free-form"
    with pytest.raises(ConfigError, match="question is empty"):
        question_record("x.mp4", "video", "  ")
    with pytest.raises(ConfigError, match="media kind"):
        question_record("x.wav", "audio", "what?")


def test_decoding_defaults_are_the_evaluation_ones():
    decoding = decoding_settings()
    assert (decoding.temperature, decoding.top_p, decoding.max_new_tokens, decoding.do_sample) == (0.1, 0.001, 1024, True)
    assert not decoding_settings(temperature=0).do_sample
    with pytest.raises(ConfigError, match="top_p"):
        decoding_settings(top_p=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_reasoning_streams_token_by_token_and_adds_up_to_the_reply(arch, tiny_models, clip):
    adapter = load_adapter(tiny_models[arch])
    record = question_record(clip, "video", "Which colour comes first?", ["red", "blue"])
    pieces: dict[int, list[str]] = {}
    columns = []
    replies = ask(adapter, record, decoding_settings(temperature=1.0, top_p=1.0, max_new_tokens=24),
                  frame_orders=("ordered", "shuffled", "reversed"), samples=2, seed=3,
                  on_text=lambda row, text: pieces.setdefault(row, []).append(text),
                  on_token=lambda tokens, live: columns.append((tokens.clone(), live.clone())))
    assert [r.frame_order for r in replies] == ["ordered"] * 2 + ["shuffled"] * 2 + ["reversed"] * 2
    assert len(columns) == max(r.num_tokens for r in replies)  # the hook saw every sampled column
    assert all(tokens.shape == (6,) for tokens, _ in columns)
    for row, reply in enumerate(replies):
        assert "".join(pieces.get(row, [])) == reply.text  # the streamed text is the reply, piece by piece
        assert reply.num_tokens == sum(bool(live[row]) for _, live in columns)
        if reply.num_tokens > 4:
            assert len(pieces[row]) > 1
    # the same seed again gives the same completions: streaming changes nothing
    again = ask(adapter, record, decoding_settings(temperature=1.0, top_p=1.0, max_new_tokens=24),
                frame_orders=("ordered", "shuffled", "reversed"), samples=2, seed=3)
    assert [r.text for r in again] == [r.text for r in replies]


@pytest.mark.parametrize("arch", ARCHS)
def test_frame_times_follow_the_frame_order(arch, tiny_models, clip):
    adapter = load_adapter(tiny_models[arch])
    record = question_record(clip, "video", "Which colour comes first?", ["red", "blue"])
    ordered, shuffled, reversed_ = ask(adapter, record, decoding_settings(max_new_tokens=2),
                                       frame_orders=("ordered", "shuffled", "reversed"), seed=5)
    times = ordered.frame_times
    assert times == sorted(times) and times[0] == 0.0
    count = 16 if arch == "tinyllava-video" else 4  # 16 uniform frames; the qwen rule: 2 s at 2 fps
    assert len(times) == count
    assert sorted(shuffled.frame_times) == times and shuffled.frame_times != times
    assert reversed_.frame_times == times[::-1]
    # the frames shown are those times' frames: red in the first second, blue after
    for reply in (ordered, shuffled, reversed_):
        reds = [bool(frame[..., 0].mean() > frame[..., 2].mean()) for frame in reply.frames]
        assert reds == [t < 1.0 for t in reply.frame_times]


def test_infer_prints_the_stream_then_the_answer_and_frame_times(tiny_models, clip):
    out = Chunks()
    reply = run_infer(tiny_models["qwen2.5-vl"], clip, "video", "Which colour comes first?", options=["red", "blue"],
                      temperature=1.0, top_p=1.0, max_new_tokens=16, out=out)
    printed = out.getvalue()
    assert printed.startswith(reply.text) and len(out.chunks) > 3
    assert f"answer: {reply.answer or '(no <answer> tag)'}" in printed
    assert "frames (ordered, 4 at 2.00 fps): 0.00 0.62 1.25 1.88 s" in printed


def test_infer_command_on_an_image(tiny_models, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    code = main(["infer", "--model", str(tiny_models["tinyllava-video"]), "--image", str(tmp_path / "grey.png"),
                 "--question", "What colour is it?", "--max-new-tokens", "8", "--temperature", "0"])
    assert code == 0
    assert "image: one frame" in capsys.readouterr().out


def test_infer_refuses_a_missing_video_before_loading(tiny_models, tmp_path, capsys):
    code = main(["infer", "--model", str(tiny_models["qwen2.5-vl"]), "--video", str(tmp_path / "none.mp4"),
                 "--question", "What happens?"])
    assert code == 2
    assert "none.mp4: no such file" in capsys.readouterr().err
