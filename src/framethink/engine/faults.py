"""What a long run meets besides bugs: a stop signal from the cluster, and media that cannot be read.

- `StopSignals`: SIGTERM (a scheduler preempting the job) and SIGINT (Ctrl-C) become a request to stop at the
  end of the current step, where the run writes a checkpoint and says how to resume. A second Ctrl-C stops at
  once.
- `check_media`: before any model loads, every record's media must exist and open (the container header of a
  video, the header of an image, the first image of a frame folder): a quick look, not a decode, split over the
  processes and over threads, every bad record listed at once. `framethink data check` decodes too.
"""
from __future__ import annotations

import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import av
from PIL import Image

from framethink.data.records import Record
from framethink.data.video import FRAME_IMAGE_SUFFIXES
from framethink.engine.processes import gather_objects, is_main_process, process_count, process_rank
from framethink.errors import DataError, FramethinkError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Turns SIGTERM / SIGINT into `received` (the signal's number) while installed."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # Python delivers signals to the main thread
            return
        for number in STOP_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None and number == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        self.received = number
        if is_main_process():
            print(f"{signal.Signals(number).name} received: the run stops after the current step and writes a "
                  "checkpoint (Ctrl-C again stops at once, without one)", file=sys.stderr, flush=True)


class MediaCheckError(FramethinkError):
    """Records whose media is missing or does not open, every one of them."""

    def __init__(self, faults: list[DataError]) -> None:
        self.faults = faults
        lines = "\n".join(f"  {fault}" for fault in faults)
        super().__init__(f"{len(faults)} record(s) have media that cannot be used (checked before loading the model; "
                         f"`--skip-data-check` skips this check):\n{lines}")


def check_media(records: list[Record], threads: int = 8) -> None:
    """Raise MediaCheckError listing every record whose media is missing or does not open. Each process looks
    at its share of the distinct media files; the faults are gathered so every process raises the same error."""
    media = sorted({(path, record.media_kind) for record in records for path in record.media})
    mine = media[process_rank()::process_count()]
    with ThreadPoolExecutor(threads) as pool:
        found = {key: fault for key, fault in zip(mine, pool.map(lambda key: media_fault(*key), mine)) if fault}
    bad = {key: fault for part in gather_objects(found) for key, fault in part.items()}
    faults = []
    for record in records:
        for path in record.media:
            if (path, record.media_kind) in bad:
                faults.append(record.error(record.media_field, f"{path}: {bad[path, record.media_kind]}"))
    if faults:
        raise MediaCheckError(faults)


def media_fault(path: Path, kind: str) -> str | None:
    """Why the media file at `path` cannot be used, or None: it must exist and its header must open."""
    try:
        if kind == "image":
            with Image.open(path):
                return None
        if path.is_dir():
            if not any(p.suffix.lower() in FRAME_IMAGE_SUFFIXES for p in path.iterdir()):
                return f"the frame folder holds no {'/'.join(FRAME_IMAGE_SUFFIXES)} images"
            return None
        with av.open(str(path)) as container:
            return None if container.streams.video else "no video stream"
    except FileNotFoundError:
        return "no such file"
    except (OSError, av.FFmpegError) as err:  # PIL's UnidentifiedImageError is an OSError
        return f"does not open: {err}"
