"""The OpenAI-compatible chat-completions API of `framethink serve` (docs/serving.md#the-api).

POST /v1/chat/completions answers in OpenAI's `chat.completion` format, or, with `"stream": true`, as server-sent
events: `data: {chat.completion.chunk}` lines, the first of each choice carrying the role, then one per text
piece as it is generated, a last one with the finish reason, then `data: [DONE]`. GET /v1/models lists the served
model. A request that cannot be answered gets OpenAI's error object with the field named in `param`, before any
generation starts: bad media are decoded and checked first. A failure after a stream began is sent as an error
event before [DONE].
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from framethink.errors import FramethinkError
from framethink.infer import Reply, decoding_settings
from framethink.models.adapter import Decoding
from framethink.serve.media import RequestError, chat_record
from framethink.serve.session import Done, ModelSession, Piece

# Fields whose OpenAI meaning the server does not implement: refused when set, never silently ignored.
UNSUPPORTED = ("stop", "tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs",
               "response_format", "logit_bias", "presence_penalty", "frequency_penalty", "audio", "modalities",
               "prediction", "reasoning_effort", "web_search_options")
# Fields that change nothing about the reply.
ACCEPTED = ("model", "messages", "n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stream",
            "stream_options", "mm_processor_kwargs", "user", "metadata", "store", "service_tier", "parallel_tool_calls")
NEUTRAL = {"logprobs": (False,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0)}


@dataclass
class ChatRequest:
    decoding: Decoding
    samples: int
    seed: int
    stream: bool
    include_usage: bool
    fps: float | None


def error_response(err: RequestError) -> JSONResponse:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return JSONResponse({"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}},
                        status_code=err.status)


def _number(payload: dict, key: str, default: float, low: float, high: float, *, low_open: bool = False) -> float:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"expected a number, got {value!r}", key)
    if value > high or value < low or (low_open and value == low):
        raise RequestError(f"must be in {'(' if low_open else '['}{low}, {high}], got {value}", key)
    return float(value)


def _integer(payload: dict, key: str, default: int, low: int, high: int) -> int:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"expected an integer, got {value!r}", key)
    if not low <= value <= high:
        raise RequestError(f"must be in [{low}, {high}], got {value}", key)
    return value


def parse_request(payload: Any, session: ModelSession) -> ChatRequest:
    """The generation settings of a request body (its messages are read by `chat_record`)."""
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    for key, value in payload.items():
        if key in UNSUPPORTED:
            if value is not None and value not in NEUTRAL.get(key, ()):
                raise RequestError("this parameter is not supported by framethink serve", key)
        elif key not in ACCEPTED:
            raise RequestError("unknown parameter", key)
    model = payload.get("model")
    if model != session.name:
        raise RequestError(f"the model {model!r} does not exist; this server serves {session.name!r}", "model",
                           status=404, code="model_not_found")
    limits = session.limits
    max_tokens = _integer(payload, "max_completion_tokens", 0, 1, limits.max_new_tokens) or \
        _integer(payload, "max_tokens", limits.max_new_tokens, 1, limits.max_new_tokens)
    decoding = decoding_settings(temperature=_number(payload, "temperature", 1.0, 0.0, 2.0),
                                 top_p=_number(payload, "top_p", 1.0, 0.0, 1.0, low_open=True),
                                 max_new_tokens=max_tokens)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"expected true or false, got {stream!r}", "stream")
    options = payload.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError('expected {"include_usage": true|false}', "stream_options")
    mm = payload.get("mm_processor_kwargs") or {}
    if not isinstance(mm, dict) or set(mm) - {"fps"}:
        raise RequestError('only {"fps": <frames per second of the image frames>} is understood',
                           "mm_processor_kwargs")
    fps = mm.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise RequestError(f"expected a frame rate > 0, got {fps!r}", "mm_processor_kwargs.fps")
    return ChatRequest(decoding=decoding, samples=_integer(payload, "n", 1, 1, limits.max_samples),
                       seed=_integer(payload, "seed", 0, -(2**63), 2**63 - 1), stream=stream,
                       include_usage=bool(options.get("include_usage", False)), fps=fps)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    too_large = RequestError(f"the request body exceeds the server's limit of {limit} bytes (--max-upload-mb)",
                             status=413, code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _usage(replies: list[Reply]) -> dict:
    prompt = replies[0].prompt_tokens
    completion = sum(r.num_tokens for r in replies)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(replies: list[Reply], *, name: str, request_id: str, created: int) -> dict:
    """OpenAI's `chat.completion` object."""
    return {
        "id": request_id, "object": "chat.completion", "created": created, "model": name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                     "finish_reason": r.finish_reason} for i, r in enumerate(replies)],
        "usage": _usage(replies),
    }


def _event(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def stream_events(events: Iterator[Piece | Done], samples: int, *, name: str, request_id: str, created: int,
                  include_usage: bool) -> Iterator[bytes]:
    """Server-sent events of OpenAI's chunk stream. A failure after the stream began is sent as an error
    object, as OpenAI's API does, followed by [DONE]."""

    def chunk(choices: list[dict], **extra: Any) -> bytes:
        return _event({"id": request_id, "object": "chat.completion.chunk", "created": created, "model": name,
                       "choices": choices, **extra})

    yield from (chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}]) for i in range(samples))
    try:
        for event in events:
            if isinstance(event, Piece):
                yield chunk([{"index": event.row, "delta": {"content": event.text}, "logprobs": None,
                              "finish_reason": None}])
            else:
                for i, reply in enumerate(event.replies):
                    yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason}])
                if include_usage:
                    yield chunk([], usage=_usage(event.replies))
    except FramethinkError as err:  # e.g. a video that decodes at its ends but not in the middle
        yield _event({"error": {"message": str(err), "type": "invalid_request_error", "param": None, "code": None}})
    except Exception as err:  # the model failed: the client learns it, the server goes on
        yield _event({"error": {"message": f"{type(err).__name__}: {err}", "type": "server_error", "param": None,
                                "code": None}})
    yield _event("[DONE]")


def add_chat_api(app: FastAPI, session: ModelSession) -> None:
    """Route /v1/models and /v1/chat/completions to `session`."""
    started = int(time.time())

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": session.name, "object": "model", "created": started,
                                            "owned_by": "framethink"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        workdir = Path(tempfile.mkdtemp(prefix="framethink-request-"))
        handed_over = False  # once the stream owns the folder, the stream removes it
        try:
            body = await read_body(request, session.limits.max_upload_bytes)
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise RequestError(f"the request body is not JSON: {err}") from None
            settings = parse_request(payload, session)
            record = await run_in_threadpool(chat_record, payload.get("messages"), workdir, settings.fps)
            request_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            ask = dict(samples=settings.samples, seed=settings.seed, template="plain")
            if settings.stream:
                events = session.stream(record, settings.decoding, **ask)
                handed_over = True
                return StreamingResponse(
                    _removing(workdir, stream_events(events, settings.samples, name=session.name,
                                                     request_id=request_id, created=created,
                                                     include_usage=settings.include_usage)),
                    media_type="text/event-stream")
            replies = await run_in_threadpool(lambda: session.reply(record, settings.decoding, **ask))
            return completion_body(replies, name=session.name, request_id=request_id, created=created)
        except RequestError as err:
            return error_response(err)
        except FramethinkError as err:  # a question the model cannot take (e.g. a bad option list)
            return error_response(RequestError(str(err)))
        finally:
            if not handed_over:
                shutil.rmtree(workdir, ignore_errors=True)


def _removing(workdir: Path, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """`chunks`, then `workdir` removed (also when the client leaves early)."""
    try:
        yield from chunks
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
