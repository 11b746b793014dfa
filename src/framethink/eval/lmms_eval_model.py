"""framethink checkpoints as an lmms-eval model (lmms-eval >= 0.7; docs/lmms-eval.md).

    python -m lmms_eval --model framethink --model_args pretrained=DIR[,key=value...] --tasks TASKS

lmms-eval finds the model through the `lmms_eval.models` entry point (pyproject.toml), which names `manifest`:
lmms-eval 0.7 loads every entry point of that group and registers the `ModelManifest` it returns
(EvolvingLMMs-Lab/lmms-eval, lmms_eval/models/registry_v2.py, `ModelRegistryV2.load_entrypoint_manifests`).
This module imports lmms-eval, so only lmms-eval imports it.

Each request becomes a framethink `Record` whose question is the task's prompt text and whose media is the
task's visual, and goes through the checkpoint's own adapter (`framethink.models.load_adapter`): the frame
rule, pixel bounds, prompt template and system message saved with the model, framethink's frame decoding and
visual preprocessing, and the same batched generation `framethink eval run` uses.
"""
from __future__ import annotations

import re
import tempfile
import zlib
from collections.abc import Callable, Iterable
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from framethink.data.clips import check_frame_order
from framethink.data.prompts import get_template
from framethink.data.records import PROBLEM_TYPES, Record
from framethink.data.video import FRAME_IMAGE_SUFFIXES
from framethink.engine.parameters import DTYPES
from framethink.errors import ConfigError
from framethink.models import load_adapter
from framethink.models.adapter import Decoding, EncodedPrompt

MODEL_ID = "framethink"
OUTPUTS = ("full", "answer")
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def manifest():
    """The `lmms_eval.models` entry point: registers `--model framethink` (a `ModelManifest`, imported here because
    importing `lmms_eval.models` loads the entry points, this one included)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.FrameThink")


def _optional_int(name: str, value: Any) -> int | None:
    if value is None or str(value).lower() in ("", "none"):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model argument {name}={value!r} is not an integer") from None


def answer_of(text: str) -> str:
    """The content of the last `<answer>...</answer>` tag of a completion; empty when it has none (the task then
    scores an empty answer, as Video-R1's evaluation scores an output without the tag)."""
    found = _ANSWER_TAG.findall(text)
    return found[-1] if found else ""


def cut_at_stop(text: str, until: Iterable[str]) -> str:
    """The completion up to the first of lmms-eval's stop strings (`gen_kwargs["until"]`)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def decoding_from(gen_kwargs: dict, default_max_new_tokens: int) -> Decoding:
    """framethink's decoding from a task's `generation_kwargs`: temperature 0 (lmms-eval's default) or
    `do_sample: false` decodes greedily; beam search is not offered by framethink's generation."""
    known = {"until", "max_new_tokens", "temperature", "top_p", "do_sample", "num_beams"}
    unknown = sorted(set(gen_kwargs) - known)
    if unknown:
        raise ConfigError(f"generation_kwargs {unknown} are not supported by the framethink model (known: {sorted(known)})")
    if int(gen_kwargs.get("num_beams") or 1) != 1:
        raise ConfigError(f"generation_kwargs num_beams={gen_kwargs['num_beams']}: framethink decodes without beam search")
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
    top_p = gen_kwargs.get("top_p")
    return Decoding(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens),
                    temperature=temperature if do_sample else 0.0,
                    top_p=float(top_p) if top_p is not None and do_sample else 1.0, do_sample=do_sample)


class FrameThink(lmms):
    """Any checkpoint `framethink.models.load_adapter` reads (Qwen2-VL, Qwen2.5-VL, TinyLLaVA-Video, ...).

    Model arguments (`--model_args key=value,...`); unset ones come from the checkpoint:
      pretrained     the checkpoint directory (required)
      template       framethink prompt template wrapping the task's prompt (default: the checkpoint's own, saved
                     in framethink.json); `plain` passes the task's prompt through unchanged
      problem_type   the record type whose template suffix applies (default "multiple choice")
      frames         cap on the frames per clip (default: the checkpoint's frame rule)
      max_pixels     bound on each video frame's pixels (Qwen-VL; default: the checkpoint's processor)
      frame_order    ordered | shuffled | reversed (temporal-sensitivity runs; shuffles are seeded per item)
      output         full (the completion) | answer (the content of its last <answer> tag)
      max_new_tokens used when a task's generation_kwargs do not set it (default 1024)
      dtype          float32 | bfloat16 | float16;  seed  for sampled decoding and frame shuffles
    lmms-eval itself passes batch_size (--batch_size) and device (--device).
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, template: str | None = None,
                 problem_type: str = "multiple choice", frames: Any = None, max_pixels: Any = None,
                 frame_order: str = "ordered", output: str = "full", max_new_tokens: Any = 1024,
                 dtype: str = "float32", seed: Any = 0, batch_size: Any = 1, device: str | None = None,
                 max_batch_size: Any = None, **unknown: Any) -> None:
        # lmms-eval passes batch_size, max_batch_size and device from its own flags; framethink batches at batch_size
        super().__init__()
        if unknown:
            raise ConfigError(f"unknown framethink model argument(s) {sorted(unknown)}; see docs/lmms-eval.md")
        if not pretrained:
            raise ConfigError("the framethink model needs --model_args pretrained=DIR")
        if problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"model argument problem_type={problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")
        if output not in OUTPUTS:
            raise ConfigError(f"model argument output={output!r} is not one of {', '.join(OUTPUTS)}")
        if dtype not in DTYPES:
            raise ConfigError(f"model argument dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        check_frame_order(frame_order)
        self.adapter = load_adapter(Path(pretrained), num_frames=_optional_int("frames", frames),
                                    max_pixels=_optional_int("max_pixels", max_pixels), dtype=DTYPES[dtype],
                                    device=device or "cpu")
        self.template = template or self.adapter.default_template
        formats = get_template(self.template).suffix  # an unknown name fails here, before any request
        if problem_type not in formats:
            raise ConfigError(f"template {self.template!r} formats only {', '.join(formats)} questions, not "
                              f"problem_type={problem_type!r}")
        self.problem_type, self.frame_order, self.output = problem_type, frame_order, output
        self.max_new_tokens = _optional_int("max_new_tokens", max_new_tokens) or 1024
        self.seed = _optional_int("seed", seed) or 0
        self.batch_size = max(1, _optional_int("batch_size", batch_size) or 1)
        self._images = tempfile.TemporaryDirectory(prefix="framethink-lmms-eval-")  # in-memory task images
        torch.manual_seed(self.seed)

    # ------------------------------------------------------------------ requests -> records
    def _media(self, visuals: Any, where: str) -> tuple[str, list[Path]]:
        """(media kind, paths) of a request's visuals: a video file or frame folder, an image file, or a PIL
        image (written to a temporary PNG); framethink's records hold one visual."""
        if visuals is None:
            return "text", []
        visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        if not visuals:
            return "text", []
        if len(visuals) > 1:
            raise ConfigError(f"{where}: {len(visuals)} visuals; the framethink model takes one video or image per question")
        visual = visuals[0]
        if isinstance(visual, (str, Path)):
            path = Path(visual)
            if not path.exists():
                raise ConfigError(f"{where}: visual {path} does not exist")
            return ("image" if path.suffix.lower() in FRAME_IMAGE_SUFFIXES else "video"), [path.resolve()]
        if hasattr(visual, "save") and hasattr(visual, "convert"):  # a PIL image
            path = Path(self._images.name) / f"{zlib.crc32(where.encode()):08x}.png"
            visual.convert("RGB").save(path)
            return "image", [path]
        raise ConfigError(f"{where}: visual of type {type(visual).__name__} is neither a path nor a PIL image")

    def _record(self, context: str, doc_to_visual: Callable | None, doc_id: int, task: str, split: str) -> Record:
        where = f"task {task} split {split} doc {doc_id}"
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        kind, media = self._media(visuals, where)
        return Record(id=f"{task}/{split}/{doc_id}", question=context, options=[], problem_type=self.problem_type,
                      answer="", solution="", media_kind=kind, media=media, source=task, origin=where)

    def _encode(self, record: Record) -> EncodedPrompt:
        item_seed = (zlib.crc32(record.id.encode()) + self.seed) % 2**31  # a shuffle fixed per item
        return self.adapter.encode(record, template=self.template, frame_order=self.frame_order, seed=item_seed)

    # ------------------------------------------------------------------ lmms-eval interface
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batched generation; requests with the same generation_kwargs share batches (results in request order)."""
        results: list[str | None] = [None] * len(requests)
        key = lambda i: repr(sorted(requests[i].args[1].items(), key=lambda kv: kv[0]))  # noqa: E731
        for _, group in groupby(sorted(range(len(requests)), key=key), key=key):
            indices = list(group)
            gen_kwargs = requests[indices[0]].args[1]
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            decoding = decoding_from(gen_kwargs, self.max_new_tokens)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                prompts = []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    prompts.append(self._encode(self._record(context, doc_to_visual, doc_id, task, split)))
                texts = self.adapter.generate_texts(prompts, decoding)  # generate runs without gradients
                for i, text in zip(batch, texts):
                    text = cut_at_stop(text, until)
                    results[i] = answer_of(text) if self.output == "answer" else text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], gen_kwargs), results[i])
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(sum of the continuation's token log-probs after the prompt, whether greedy decoding produces exactly
        those tokens). The continuation is scored as the start of the assistant's reply."""
        out = []
        for request in requests:
            if len(request.args) == 2:  # lmms-eval's unconditional (mutual-information) form: text only
                context, target = request.args
                record = self._record(context, None, request.doc_id, request.task_name, "unconditional")
            else:
                context, target, doc_to_visual, doc_id, task, split = request.args
                record = self._record(context, doc_to_visual, doc_id, task, split)
                if callable(target):
                    target = target(self.task_dict[task][split][doc_id])
            ids = self.adapter.tokenizer(str(target), add_special_tokens=False, return_tensors="pt")["input_ids"]
            prompt = self._encode(record)
            greedy_decoding = Decoding(max_new_tokens=ids.shape[1], temperature=0.0, top_p=1.0, do_sample=False)
            with torch.no_grad():
                logprob = self.adapter.completion_logprobs([prompt], [0], ids).sum().item()
                greedy = self.adapter.generate([prompt], [0], greedy_decoding)
            produced = greedy.tokens[0, : int(greedy.lengths[0])]  # EOS included when greedy decoding stops early
            out.append((logprob, produced.tolist() == ids[0].tolist()))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the framethink model answers single-turn tasks; multi-round tasks are not supported")
