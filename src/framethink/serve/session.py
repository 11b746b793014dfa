"""The served model: one adapter, one generation at a time, replies streamed from a worker thread.

Both front ends of `framethink serve` (the chat-completions API and the web page) ask through `ModelSession`, so a
question is answered the same way whichever door it came in by. Generation is CPU/GPU-bound and the adapter is not
safe to call from two threads at once, so requests queue on one lock; a client that goes away stops its generation
at the next token (docs/serving.md#limits-and-safety).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from framethink.data.records import Record
from framethink.infer import Reply, ask
from framethink.models.adapter import Decoding, PolicyAdapter


class Cancelled(Exception):
    """Raised inside generation when the client that asked has gone."""


@dataclass
class Piece:
    """The next piece of text of row `row`."""

    row: int
    text: str


@dataclass
class Done:
    replies: list[Reply]


@dataclass
class ServeLimits:
    """What a request may ask of the server."""

    max_upload_bytes: int = 64 * 1024 * 1024  # per request body (API) and per uploaded file (page)
    max_new_tokens: int = 1024  # the most a request may ask for, and the page's setting
    max_samples: int = 8  # chat-completions `n`


@dataclass
class ModelSession:
    adapter: PolicyAdapter
    name: str
    limits: ServeLimits = field(default_factory=ServeLimits)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stream(self, record: Record, decoding: Decoding, *, frame_orders: Sequence[str] = ("ordered",),
               samples: int = 1, seed: int = 0, template: str | None = None,
               pieces: bool = True) -> Iterator[Piece | Done]:
        """`Piece`s as they are generated (unless `pieces` is False), then `Done`. Generation runs in a worker
        thread; its exceptions are raised here. Closing the iterator early (the client went away) stops the
        generation at its next token."""
        events: queue.Queue[Any] = queue.Queue()
        gone = threading.Event()

        def check(tokens: torch.Tensor, live: torch.Tensor) -> None:
            if gone.is_set():
                raise Cancelled()

        def work() -> None:
            try:
                with self.lock:
                    if gone.is_set():
                        return
                    replies = ask(self.adapter, record, decoding, frame_orders=frame_orders, samples=samples,
                                  seed=seed, template=template, on_token=check,
                                  on_text=(lambda row, text: events.put(Piece(row, text))) if pieces else None)
                events.put(Done(replies))
            except Cancelled:
                pass
            except BaseException as err:  # handed to the caller's thread, which raises it
                events.put(err)

        worker = threading.Thread(target=work, name="framethink-generate", daemon=True)
        worker.start()
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Done):
                    return
        finally:
            gone.set()

    def reply(self, record: Record, decoding: Decoding, **kwargs: Any) -> list[Reply]:
        """The replies of `stream`, once all are complete."""
        for event in self.stream(record, decoding, pieces=False, **kwargs):
            if isinstance(event, Done):
                return event.replies
        raise RuntimeError("generation ended without a reply")
