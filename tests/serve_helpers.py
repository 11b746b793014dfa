"""A `framethink serve` app running on 127.0.0.1 in a background thread, and a synthetic clip, for the server tests."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from framethink.data.video import write_video


def colour_clip(path: Path, *, frames: int = 16, size: int = 28, fps: int = 8) -> Path:
    """Red for the first half, blue for the second."""
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[: frames // 2, ..., 0] = 255
    video[frames // 2:, ..., 2] = 255
    return write_video(path, video, fps)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 at a free port for the duration; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
