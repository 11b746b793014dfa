"""`framethink serve`: the chat-completions API and the web page of one model, in one FastAPI app under uvicorn.

The API routes (/v1/...) are added first and the gradio page is mounted at /, so /v1 stays the API's. The server
binds 127.0.0.1 unless told otherwise: the page runs code on the machine's CPU/GPU for whoever reaches it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI

from framethink.errors import ConfigError
from framethink.models.adapter import PolicyAdapter
from framethink.serve.api import add_chat_api
from framethink.serve.session import ModelSession, ServeLimits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build_app(adapter: PolicyAdapter, name: str, *, limits: ServeLimits = ServeLimits(),
              examples: Sequence[Path] = ()) -> FastAPI:
    """The server's app: the API for `adapter` served as `name`, and the page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page never calls home
    import gradio as gr

    from framethink.serve.page import build_page

    session = ModelSession(adapter, name, limits)
    app = FastAPI(title=f"framethink serve: {name}")
    add_chat_api(app, session)
    page = build_page(session, examples)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    return gr.mount_gradio_app(app, page, path="/", max_file_size=limits.max_upload_bytes, ssr_mode=False,
                               allowed_paths=[str(p.parent) for p in examples], footer_links=[], theme=theme)


def example_videos(folder: Path | None) -> list[Path]:
    """The videos directly under `folder` (sorted), offered on the page."""
    from framethink.serve.page import VIDEO_SUFFIXES

    if folder is None:
        return []
    if not folder.is_dir():
        raise ConfigError(f"--examples {folder}: not a folder")
    videos = sorted(p.resolve() for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ConfigError(f"--examples {folder}: no videos ({', '.join(VIDEO_SUFFIXES)}) in it")
    return videos


def serve(model: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, name: str | None = None,
          frames: int | None = None, max_upload_mb: float = 64.0, max_new_tokens: int = 1024, max_samples: int = 8,
          examples: Path | None = None, device: str = "cpu") -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    from framethink.models import load_adapter

    if max_upload_mb <= 0 or max_new_tokens < 1 or max_samples < 1:
        raise ConfigError("--max-upload-mb must be > 0, --max-new-tokens and --max-samples >= 1")
    videos = example_videos(examples)  # argument faults before the model loads
    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 2**20), max_new_tokens=max_new_tokens,
                         max_samples=max_samples)
    adapter = load_adapter(model, num_frames=frames, device=device)
    app = build_app(adapter, name or Path(model).resolve().name, limits=limits, examples=videos)
    print(f"serving {model} on http://{host}:{port}/ (page) and http://{host}:{port}/v1 (API)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


@contextmanager
def serving_in_background(app: FastAPI, *, host: str = DEFAULT_HOST, start_timeout: float = 60.0) -> Iterator[str]:
    """Serve `app` from a background thread at a free port of `host` while the block runs (tests, benchmarks,
    notebooks); yields the base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="framethink-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
