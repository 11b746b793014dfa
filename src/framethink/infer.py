"""Ask a model one question about one video or image, with the reasoning streamed as it is generated.

`framethink infer` (and the server of `framethink serve`) go through `ask`: the record is encoded by the model's
own adapter (its frame rule, pixel bounds and prompt template, as in training and evaluation), the completions of
every frame order asked for are sampled in one batched call, and each sampled token reaches the caller as text
through the adapter's per-token hook (`framethink.models.sampling.sample_completions`). See docs/serving.md#framethink-infer.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from transformers import TextStreamer

from framethink.config import EvalConfig
from framethink.data.clips import check_frame_order, shown_order
from framethink.data.records import Record
from framethink.data.video import load_image
from framethink.errors import ConfigError
from framethink.models.adapter import Decoding, PolicyAdapter
from framethink.rewards.accuracy import extract_answer

MEDIA_KINDS = ("video", "image", "text")
_LETTERED = re.compile(r"[A-Z]\.\s")  # "A. red": an option that already carries its letter
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

# Called with (row, text): the next piece of row `row`'s completion, as soon as it is decodable.
TextCallback = Callable[[int, str], None]


@dataclass
class Reply:
    """One completion and what the model was shown.

    `frame_times` are the seconds (from the start of the video) of the frames in the order the model saw them;
    `frames` [T, H, W, 3] uint8 are those frames, in that order (an image is one frame at 0 s, a text-only
    question has none)."""

    frame_order: str
    text: str
    answer: str
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens reached)
    num_tokens: int
    frame_times: list[float]
    frames: np.ndarray | None  # None for a text-only question
    sample_fps: float
    prompt_tokens: int  # length of the prompt's input_ids

    @property
    def reasoning(self) -> str:
        """The text inside <think> ... </think> (all of the text when the model wrote no think tag)."""
        match = _THINK.search(self.text)
        return (match.group(1) if match else self.text).strip()


def option_list(options: Sequence[str]) -> list[str]:
    """Options as records hold them: "red" -> "A. red"; options already lettered ("A. red") are kept as given."""
    options = [o.strip() for o in options if o.strip()]
    if len(options) > 26:
        raise ConfigError(f"--options: at most 26 options (A-Z), got {len(options)}")
    lettered = [bool(_LETTERED.match(o)) for o in options]
    if any(lettered) and not all(lettered):
        raise ConfigError(f"--options: letter every option ('A. red') or none ('red'), got {options}")
    return options if all(lettered) else [f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options)]


def question_record(media: str | Path | None, kind: str, question: str, options: Sequence[str] = (), *,
                    fps: float | None = None) -> Record:
    """A record for one question about one medium (`media` None for a text-only question): multiple choice when
    options are given, else free-form. `fps` is the frame rate of a folder of frame images (a video sent as its
    frames)."""
    if kind not in MEDIA_KINDS:
        raise ConfigError(f"media kind {kind!r} is not one of {', '.join(MEDIA_KINDS)}")
    if (media is None) != (kind == "text"):
        raise ConfigError(f"a {kind} question needs {'no' if kind == 'text' else 'a'} media path")
    if not question.strip():
        raise ConfigError("the question is empty")
    options = option_list(options)
    return Record(
        id="question", question=question, options=options,
        problem_type="multiple choice" if options else "free-form", answer="", solution="", media_kind=kind,
        media=[] if media is None else [Path(media)], origin=str(media or "question"),
        extra={} if fps is None else {"fps": fps}, media_field="" if media is None else kind,
    )


def decoding_settings(*, temperature: float | None = None, top_p: float | None = None,
                      max_new_tokens: int | None = None) -> Decoding:
    """Decoding for a question: the evaluation defaults (Video-R1's temperature 0.1, top_p 0.001, 1024 new tokens;
    docs/serving.md#decoding) unless given; temperature 0 decodes greedily."""
    defaults = EvalConfig()
    temperature = defaults.temperature if temperature is None else temperature
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    top_p = defaults.top_p if top_p is None else top_p
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    max_new_tokens = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return Decoding(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, do_sample=temperature > 0)


class _RowText(TextStreamer):
    """One row's tokens -> text pieces, with transformers' `TextStreamer` rules (generation/streamers.py): a piece
    is passed on once it cannot change with the next token (whole words, never half a UTF-8 character)."""

    def __init__(self, tokenizer, row: int, on_text: TextCallback) -> None:
        super().__init__(tokenizer, skip_special_tokens=True)
        self.row, self.on_text = row, on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(self.row, text)


def ask(
    adapter: PolicyAdapter,
    record: Record,
    decoding: Decoding,
    *,
    frame_orders: Sequence[str] = ("ordered",),
    samples: int = 1,
    seed: int = 0,
    template: str | None = None,
    on_text: TextCallback | None = None,
    on_token: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> list[Reply]:
    """Completions for `record`: `samples` per frame order, all rows in one batched generate call, row
    k * samples + j being sample j with frame order k. `on_text(row, piece)` gets each row's text as it is
    generated; `on_token` the raw sampled columns. `seed` decides the shuffled order and the sampling; `template`
    (default: the model's own) wraps the question (docs/serving.md#prompts)."""
    for order in frame_orders:
        check_frame_order(order)
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    template = template or adapter.default_template
    prompts = [adapter.encode(record, template=template, frame_order=o, seed=seed) for o in frame_orders]
    row_prompt = [k for k in range(len(prompts)) for _ in range(samples)]
    streams = [_RowText(adapter.tokenizer, row, on_text) for row in range(len(row_prompt))] if on_text else []
    eos = set(adapter.eos_ids)

    def each_token(tokens: torch.Tensor, live: torch.Tensor) -> None:
        if on_token is not None:
            on_token(tokens, live)
        for stream, token, alive in zip(streams, tokens.tolist(), live.tolist()):
            if alive and token not in eos:
                stream.put(torch.tensor([token]))

    completions = adapter.generate(prompts, row_prompt, decoding, generator=torch.Generator().manual_seed(seed),
                                   on_token=each_token)
    for stream in streams:
        stream.end()
    texts = adapter.decode(completions)
    ended = torch.isin(completions.tokens, torch.tensor(sorted(eos))).any(-1)  # [N]
    shown = {k: shown_frames(adapter, record, prompts[k].meta, frame_orders[k]) for k in set(row_prompt)}
    return [
        Reply(frame_order=frame_orders[k], text=text, answer=extract_answer(text),
              finish_reason="stop" if bool(ended[row]) else "length", num_tokens=int(completions.lengths[row]),
              frame_times=shown[k][1], frames=shown[k][0], sample_fps=shown[k][2],
              prompt_tokens=prompts[k].inputs["input_ids"].shape[1])
        for row, (k, text) in enumerate(zip(row_prompt, texts))
    ]


def shown_frames(adapter: PolicyAdapter, record: Record, meta: dict,
                 frame_order: str) -> tuple[np.ndarray | None, list[float], float]:
    """(frames [T, H, W, 3], their times in seconds, the sampling fps) in the order the model saw them: the clip
    from the adapter's own clip cache (decoded once, by its frame rule), in the order the adapter's encoding
    reported in `meta` (the permutation of a shuffled clip)."""
    if record.media_kind == "text":
        return None, [], 0.0
    if record.media_kind == "image":
        return load_image(record.media[0]).frames, [0.0], 0.0
    sampled = adapter.clips.sample(record)
    if meta.get("num_frames") != len(sampled.frames):
        raise RuntimeError(f"{record.origin}: the model saw {meta.get('num_frames')} frames, the clip has "
                           f"{len(sampled.frames)}")
    order = shown_order(meta, frame_order)
    return sampled.frames[order], [round(float(t), 3) for t in sampled.timestamps[order]], float(sampled.fps)


def format_times(times: Sequence[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times) + " s"


def run_infer(model: Path, media: Path, kind: str, question: str, *, options: Sequence[str] = (),
              frame_order: str = "ordered", frames: int | None = None, temperature: float | None = None,
              top_p: float | None = None, max_new_tokens: int | None = None, seed: int = 0, device: str = "cpu",
              out: TextIO | None = None) -> Reply:
    """`framethink infer`: load the model, stream its reasoning to `out`, then print the answer and the frames."""
    from framethink.models import load_adapter

    out = out or sys.stdout
    check_frame_order(frame_order)
    record = question_record(media, kind, question, options)  # bad arguments fail before the model loads
    decoding = decoding_settings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    if not media.exists():
        raise ConfigError(f"{media}: no such file")
    adapter = load_adapter(model, num_frames=frames, device=device)

    def show(row: int, piece: str) -> None:
        out.write(piece)
        out.flush()

    (reply,) = ask(adapter, record, decoding, frame_orders=(frame_order,), seed=seed, on_text=show)
    out.write("\n\n")
    out.write(f"answer: {reply.answer or '(no <answer> tag)'}\n")
    if reply.finish_reason == "length":
        out.write(f"(stopped at {decoding.max_new_tokens} new tokens)\n")
    if kind == "video":
        out.write(f"frames ({frame_order}, {len(reply.frame_times)} at {reply.sample_fps:.2f} fps): "
                  f"{format_times(reply.frame_times)}\n")
    else:
        out.write("image: one frame\n")
    out.flush()
    return reply
