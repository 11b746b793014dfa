"""Chat-completions messages -> one framethink record, with the media written to a request's own folder.

What a request may hold (docs/serving.md#the-api):
- one user message (a system message, or earlier turns, are refused: the model answers one question in the
  prompt format it was trained with); its content is a string or a list of parts;
- text parts, joined with newlines into the question, sent to the model as written (the `plain` template);
- one `image_url` part: an image question; several `image_url` parts: the frames of one video, in order, at the
  frame rate `mm_processor_kwargs.fps` (vLLM's request field for it; default 2.0, Qwen-VL's sampling rate); the
  model's frame rule then samples them as it samples any video;
- or one `video_url` part: a video file.
Every image and video is a base64 `data:` URL: the server never fetches anything.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path
from typing import Any

from PIL import Image

from framethink.data.records import Record
from framethink.data.video import verify_media
from framethink.errors import FramethinkError, VideoDecodeError
from framethink.infer import question_record

DEFAULT_FRAMES_FPS = 2.0
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*;base64,(?P<data>.*)", re.DOTALL)
_VIDEO_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/x-matroska": ".mkv", "video/quicktime": ".mov",
                 "video/avi": ".avi", "video/x-msvideo": ".avi"}


class RequestError(FramethinkError):
    """A request the server refuses: `param` names the field (OpenAI's error `param`), `status` the HTTP code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None) -> None:
        self.message, self.param, self.status, self.code = message, param, status, code
        super().__init__(f"{param}: {message}" if param else message)


def decode_data_url(url: Any, param: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a base64 `data:` URL."""
    if not isinstance(url, str):
        raise RequestError(f"expected a string URL, got {type(url).__name__}", param)
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        shown = url[:40] + ("..." if len(url) > 40 else "")
        raise RequestError(f"only base64 data URLs (data:<mime>;base64,...) are accepted, got {shown!r}", param)
    try:
        data = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"invalid base64 data: {err}", param) from None
    if not data:
        raise RequestError("the data URL is empty", param)
    return match.group("mime") or "", data


def _part_url(part: dict, kind: str) -> Any:
    """The URL of an `image_url` / `video_url` part: {"url": ...} or the URL string itself."""
    value = part.get(kind)
    return value.get("url") if isinstance(value, dict) else value


def _save_image(data: bytes, path: Path, param: str) -> tuple[int, int]:
    """Decode one image and store it as PNG; -> its (width, height)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError and truncated-image errors are OSErrors
        raise RequestError(f"cannot decode the image: {err}", param) from None
    rgb.save(path)
    return rgb.size


def chat_record(messages: Any, workdir: Path, fps: float | None = None) -> Record:
    """The record of a chat-completions `messages` list, its media written under `workdir`."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("expected a non-empty list of messages", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"expected an object, got {type(message).__name__}", f"messages[{i}]")
        role = message.get("role")
        if role != "user":
            raise RequestError(f"role {role!r}: the server answers one user message in the model's own prompt "
                               "format (no system message, no earlier turns)", f"messages[{i}].role")
    if len(messages) != 1:
        raise RequestError(f"expected one user message, got {len(messages)}", "messages")
    content = messages[0].get("content")
    where = "messages[0].content"
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise RequestError(f"expected a string or a list of parts, got {type(content).__name__}", where)
    texts, images, videos = [], [], []
    for k, part in enumerate(parts):
        param = f"{where}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "video_url"):
            (images if kind == "image_url" else videos).append(
                decode_data_url(_part_url(part, kind), f"{param}.{kind}.url") + (f"{param}.{kind}.url",))
        else:
            raise RequestError("expected a part of type text, image_url or video_url", param)
    question = "\n".join(t for t in texts if t.strip())
    if not question:
        raise RequestError("the message has no text", where)
    if videos and images:
        raise RequestError("send a video either as one video_url part or as image_url frames, not both", where)
    if len(videos) > 1:
        raise RequestError(f"one video per request, got {len(videos)} video_url parts", where)
    workdir.mkdir(parents=True, exist_ok=True)
    if videos:
        mime, data, param = videos[0]
        path = workdir / f"video{_VIDEO_SUFFIX.get(mime, '.mp4')}"
        path.write_bytes(data)
        try:
            verify_media(path, "video")
        except VideoDecodeError as err:
            raise RequestError(f"cannot decode the video: {err.reason}", param) from None
        return question_record(path, "video", question)
    if len(images) == 1:
        mime, data, param = images[0]
        path = workdir / "image.png"
        _save_image(data, path, param)
        return question_record(path, "image", question)
    if images:
        frames = workdir / "frames"
        frames.mkdir()
        sizes = {_save_image(data, frames / f"{n:06d}.png", param): param for n, (_, data, param) in enumerate(images)}
        if len(sizes) > 1:
            raise RequestError(f"the frames of one video must have one size; got {sorted(sizes)}", where)
        fps = DEFAULT_FRAMES_FPS if fps is None else fps
        return question_record(frames, "video", question, fps=fps)
    return question_record(None, "text", question)
