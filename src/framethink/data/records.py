"""One typed record for every dataset format (SPEC section 1).

Loaders for Video-R1 JSON/JSONL, TinyLLaVA-Video-R1 JSONL and LLaVA conversations live here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
MEDIA_KINDS = ("image", "video", "text")


@dataclass
class Record:
    """A question about an image, a video or nothing, with its gold answer.

    `answer` is the gold answer already extracted from `<answer>...</answer>` (SPEC 4);
    `solution` keeps the raw string. `media` holds absolute paths resolved against the data root.
    `origin` is "file:line" (or "file:[index]") for error messages.
    """

    id: str
    question: str
    options: list[str]
    problem_type: str
    answer: str
    solution: str
    media_kind: str
    media: list[Path]
    source: str = ""
    cot: str | None = None
    origin: str = ""
    start: float | None = None  # clip bounds in seconds (MVBench)
    end: float | None = None
    extra: dict = field(default_factory=dict)  # benchmark-specific metadata (task, duration, ...)
