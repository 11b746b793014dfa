"""`framethink serve`'s chat-completions API through a plain HTTP client on 127.0.0.1: OpenAI's response and chunk
formats, images, video frames and videos as data URLs, streaming equal to the whole reply, and clear errors."""
from __future__ import annotations

import base64
import io
import json
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framethink.cli import build_parser, main
from framethink.data.clips import ClipReader, FrameRule
from framethink.models import load_adapter
from framethink.models.registry import tiny_archs
from framethink.serve.app import build_app, serving_in_background
from framethink.serve.media import chat_record
from framethink.serve.session import ServeLimits
from serve_helpers import colour_clip

NAME = "tiny-qwen"
LIMIT = 200_000  # bytes per request body


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tmp_path_factory.mktemp("serve_model") / "qwen"
    assert main(["model", "tiny", "--arch", "qwen2.5-vl", "--out", str(model)]) == 0
    app = build_app(load_adapter(model), NAME, limits=ServeLimits(max_upload_bytes=LIMIT, max_new_tokens=24,
                                                                   max_samples=3))
    with serving_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return colour_clip(tmp_path_factory.mktemp("serve_clip") / "clip.mp4")


def post(url: str, body: dict | bytes) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), colour, np.uint8)).save(buffer, format="PNG")
    return data_url("image/png", buffer.getvalue())


def chat(content, **params) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 12, "temperature": 1.0,
            "seed": 7, **params}


def frames_content() -> list[dict]:
    """A red-then-blue video sent as 8 image frames, with their times in the text (as a teacher client sends)."""
    parts: list[dict] = [{"type": "text", "text": "Which colour comes first? Frames at 0.0-3.5 s."}]
    for k in range(8):
        parts.append({"type": "image_url", "image_url": {"url": png((255, 0, 0) if k < 4 else (0, 0, 255))}})
    return parts


def test_image_frames_are_timed_at_the_requests_frame_rate(tmp_path):
    messages = [{"role": "user", "content": frames_content()}]
    for fps, name in ((None, "default"), (0.5, "slow")):
        (tmp_path / name).mkdir()
        record = chat_record(messages, tmp_path / name, fps)
        assert record.media_kind == "video" and record.extra == {"fps": fps or 2.0}
        sampled = ClipReader(FrameRule(max_frames=8), cache_size=0).sample(record)  # the served model's reader
        assert sampled.timestamps.tolist() == [k / (fps or 2.0) for k in range(8)]  # 0.5 s apart, or 2 s apart


def sse(body: bytes) -> list:
    """The `data:` payloads of a server-sent-event stream ([DONE] kept as the string)."""
    events = [block for block in body.decode().split("\n\n") if block.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def test_models_lists_the_served_model(server):
    with urllib.request.urlopen(server + "/v1/models", timeout=30) as response:
        listing = json.loads(response.read())
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == [NAME]


def test_image_question_gets_an_openai_chat_completion(server):
    status, body = post(server, chat([{"type": "image_url", "image_url": {"url": png((0, 200, 0))}},
                                      {"type": "text", "text": "What colour is this?"}]))
    assert status == 200, body
    reply = json.loads(body)
    assert reply["object"] == "chat.completion" and reply["model"] == NAME and reply["id"].startswith("chatcmpl-")
    (choice,) = reply["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["completion_tokens"] <= 12 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 10  # the image's tokens are in the prompt


def test_streamed_frames_add_up_to_the_whole_reply(server):
    request = chat(frames_content(), mm_processor_kwargs={"fps": 2}, n=2)
    status, body = post(server, request)
    assert status == 200, body
    whole = json.loads(body)
    status, body = post(server, {**request, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200, body
    events = sse(body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    for index, choice in enumerate(whole["choices"]):
        deltas = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        text = "".join(d["delta"].get("content", "") for d in deltas)
        assert text == choice["message"]["content"]  # same seed: the stream is the reply, piece by piece
        assert len([d for d in deltas if d["delta"].get("content")]) > 1
        assert deltas[-1]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_video_as_a_data_url(server, clip):
    content = [{"type": "video_url", "video_url": {"url": data_url("video/mp4", clip.read_bytes())}},
               {"type": "text", "text": "Which colour comes first?"}]
    status, body = post(server, chat(content))
    assert status == 200, body
    assert json.loads(body)["usage"]["prompt_tokens"] > 10


@pytest.mark.parametrize("change, status, param, message", [
    ({"model": "gpt-4o"}, 404, "model", "does not exist"),
    ({"stop": ["\n"]}, 400, "stop", "not supported"),
    ({"best_of": 2}, 400, "best_of", "unknown parameter"),
    ({"n": 4}, 400, "n", "must be in [1, 3]"),
    ({"max_tokens": 1000}, 400, "max_tokens", "must be in [1, 24]"),
    ({"temperature": "hot"}, 400, "temperature", "expected a number"),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}, 400,
     "messages[0].role", "no system message"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}},
                                                {"type": "text", "text": "what?"}]}]}, 400,
     "messages[0].content[0].image_url.url", "only base64 data URLs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}},
                                                {"type": "text", "text": "what?"}]}]}, 400,
     "messages[0].content[0].image_url.url", "invalid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url("image/png", b"not a png")}},
                                                {"type": "text", "text": "what?"}]}]}, 400,
     "messages[0].content[0].image_url.url", "cannot decode the image"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url("video/mp4", b"\0" * 999)}},
                                                {"type": "text", "text": "what?"}]}]}, 400,
     "messages[0].content[0].video_url.url", "cannot decode the video"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png((1, 2, 3))}}]}]}, 400,
     "messages[0].content", "no text"),
])
def test_bad_requests_get_openai_errors_naming_the_field(server, change, status, param, message):
    got, body = post(server, {**chat("hello"), **change})
    assert got == status, body
    error = json.loads(body)["error"]
    assert error["param"] == param and message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_oversized_and_malformed_bodies_are_refused(server):
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(noise, "PNG")
    status, body = post(server, chat([{"type": "image_url", "image_url": {"url": data_url("image/png", noise.getvalue())}},
                                      {"type": "text", "text": "what?"}]))
    assert status == 413 and "exceeds the server's limit" in json.loads(body)["error"]["message"]
    status, body = post(server, b"{not json")
    assert status == 400 and "not JSON" in json.loads(body)["error"]["message"]
    assert post(server, chat("still answering?"))[0] == 200  # the server goes on


def test_serve_binds_this_machine_only_by_default():
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 64.0)


def test_serves_as_the_teacher_of_data_cot(server, tmp_path, capsys):
    """`framethink data cot --endpoint` (frames as image parts after their times, n samples per request) against
    this server: every record answered, none lost."""
    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--train", "2", "--test", "0", "--frames", "4",
                 "--size", "28", "--tasks", "color_first"]) == 0
    out = tmp_path / "cot.json"
    code = main(["data", "cot", "--endpoint", server + "/v1", "--served-model", NAME, "--in", str(data / "train.json"),
                 "--out", str(out), "--samples", "2", "max_new_tokens=8"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "2 records:" in printed.out  # the random tiny model's outputs are all dropped, but each was answered


def leftovers() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob("framethink-request-*"))


def test_request_media_are_removed_after_the_reply(server):
    for stream in (False, True):
        assert post(server, chat(frames_content(), stream=stream))[0] == 200
    deadline = time.monotonic() + 10
    while leftovers() and time.monotonic() < deadline:  # a stream's folder goes right after its last event
        time.sleep(0.05)
    assert leftovers() == []


@pytest.mark.parametrize("arch", [a for a in tiny_archs() if a != "qwen2.5-vl"])  # qwen2.5-vl: the fixture
def test_every_model_family_is_served(arch, tmp_path):
    model = tmp_path / arch
    assert main(["model", "tiny", "--arch", arch, "--out", str(model)]) == 0
    app = build_app(load_adapter(model), arch, limits=ServeLimits(max_new_tokens=8))
    with serving_in_background(app) as url:
        for stream in (False, True):
            status, body = post(url, {**chat(frames_content(), stream=stream), "model": arch, "max_tokens": 8})
            assert status == 200, body
        assert sse(body)[-1] == "[DONE]"
        image = chat([{"type": "image_url", "image_url": {"url": png((0, 200, 0))}}, {"type": "text", "text": "what?"}])
        assert post(url, {**image, "model": arch, "max_tokens": 8})[0] == 200


def test_serve_benchmark_runs_and_every_way_decodes_the_same_text(tmp_path):
    from benchmarks import bench_serve

    result = bench_serve.run(tmp_path, requests=1, new_tokens=4, frames=4, size=28)
    assert result["same_text_every_way"] and result["tokens"] <= 4
    assert result["api_stream_first_piece"]["median"] <= result["api_stream"]["median"]
