"""`framethink inspect`: what a model receives for one video or image, for every family.

The record goes through the model's own adapter (`load_adapter` then `encode`, as training and evaluation do: its
frame rule, pixel bounds and prompt template) and the adapter's `pack` (the embeddings and positions of the LM
forward). The report shows the prompt with each vision block summarised (its frames and their times, tokens, grid),
the sampled frame indices and fps, the pixel bounds, and checks that the prompt holds as many vision tokens as the
vision encoder makes features; `--out` saves every tensor of the forward in one safetensors file. docs/inputs.md,
"Inspecting what a model receives", says how to read it when a run fails with "video features and video tokens do
not match".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from framethink.data.clips import check_frame_order, shown_order
from framethink.data.records import Record
from framethink.errors import ConfigError
from framethink.infer import question_record
from framethink.models.adapter import EncodedPrompt

VISION_KINDS = {1: "image", 2: "video"}
DEFAULT_QUESTION = {"video": "What happens in the video?", "image": "What is in the image?"}


@dataclass
class Inspection:
    """One prompt as the model receives it.

    `tensors` are the forward's tensors by name (the adapter's inputs: input_ids, attention_mask, pixel_values or
    pixel_values_videos, image_grid_thw or video_grid_thw, mm_token_type_ids and second_per_grid_ts where the family
    uses them; position_ids [A, 1, L] of the LM forward, or [1, L] counted by the model for a family that passes
    none; frame_indices [T] int64, the decoded video's frame behind each frame of the pixels in that order; and
    sample_fps [] float64). `vision_tokens` / `vision_features` count the prompt's vision tokens and the features
    the vision encoder makes for them (they must be equal)."""

    record: Record
    prompt: EncodedPrompt
    tensors: dict[str, torch.Tensor]
    positions_counted_by_model: bool
    vision_tokens: int
    vision_features: int
    pack_error: str | None  # why the forward's embeddings could not be built (then no position_ids)
    report: str


def inspect_inputs(
    model: str | Path,
    *,
    video: str | Path | None = None,
    image: str | Path | None = None,
    question: str | None = None,
    frames: int | None = None,
    fps: float | None = None,
    max_pixels: int | None = None,
    frame_order: str = "ordered",
    seed: int = 0,
    device: str = "cpu",
) -> Inspection:
    """Encode one question about `video` or `image` for the model at `model` and describe what its forward gets.

    `frames` caps the frames per clip, `fps` sets the sampling rate of a family that samples by fps and `max_pixels`
    bounds each video frame (the family's video_max_pixels), as the same settings of a recipe would; a setting the
    model's family does not read is a ConfigError naming it. `seed` decides a shuffled order."""
    from framethink.models.registry import default_frames, load_adapter, read_training_settings

    if (video is None) == (image is None):
        raise ConfigError("inspect needs exactly one of --video or --image")
    check_frame_order(frame_order)
    kind, media = ("video", Path(video)) if video is not None else ("image", Path(image))
    if not media.exists():
        raise ConfigError(f"{media}: no such file or folder")
    record = question_record(media, kind, question or DEFAULT_QUESTION[kind])
    rule = None
    if fps is not None:
        rule = read_training_settings(model).get("frames") or default_frames(model)
        if rule.rule == "uniform":
            raise ConfigError(f"--fps {fps}: {model} samples {rule.num_frames} uniform frames per clip (frame rule "
                              "'uniform'), not by fps; set the frame count with --frames")
        if not fps > 0:
            raise ConfigError(f"--fps must be > 0, got {fps}")
        rule = replace(rule, fps=fps)
    adapter = load_adapter(model, frames=rule, num_frames=frames, max_pixels=max_pixels, device=device)
    prompt = adapter.encode(record, template=adapter.default_template, frame_order=frame_order, seed=seed)

    tensors = {name: value.detach().cpu() for name, value in prompt.inputs.items()}
    shown = _shown_indices(prompt, kind)
    tensors["frame_indices"] = torch.tensor(shown, dtype=torch.int64)
    tensors["sample_fps"] = torch.tensor(float(prompt.meta.get("fps", 0.0)), dtype=torch.float64)
    tokens, features = _vision_counts(prompt, adapter, 0)
    counted, failure = False, None
    try:  # the LM forward's embeddings and positions; fails where the prompt and the pixels disagree
        with torch.no_grad():
            packed = adapter.pack(adapter.model, [prompt], [0])
    except (RuntimeError, ValueError, IndexError) as err:
        failure = f"{type(err).__name__}: {err}"
    else:
        counted = packed.position_ids is None
        if counted:  # the model numbers the packed positions itself
            tensors["position_ids"] = (packed.attention_mask.cumsum(-1) - 1).clamp(min=0).cpu()  # [1, L]
        else:
            tensors["position_ids"] = packed.position_ids.cpu()  # [A, 1, L]
        extra = packed.inputs_embeds.shape[1] - prompt.inputs["input_ids"].shape[1]  # a placeholder's embeddings
        tokens, features = _vision_counts(prompt, adapter, extra)
    inspection = Inspection(record=record, prompt=prompt, tensors=tensors, positions_counted_by_model=counted,
                            vision_tokens=tokens, vision_features=features, pack_error=failure, report="")
    inspection.report = render(inspection, adapter, model=Path(model))
    return inspection


def _shown_indices(prompt: EncodedPrompt, kind: str) -> list[int]:
    """Decoded-video frame index of each frame of the pixels, in the order the model sees them."""
    if kind == "image":
        return [0]
    return np.asarray(prompt.meta["indices"])[shown_order(prompt.meta, prompt.frame_order)].tolist()


def _vision_counts(prompt: EncodedPrompt, adapter, placeholder_extra: int) -> tuple[int, int]:
    """(vision positions in the prompt, features the vision encoder makes for them). A family that replaces one
    placeholder by its connector's embeddings (TinyLLaVA-Video) has them equal by construction once packed."""
    inputs = prompt.inputs
    if "mm_token_type_ids" not in inputs:
        holders = int((inputs["input_ids"] < 0).sum())
        return (placeholder_extra + holders,) * 2 if holders else (0, 0)
    tokens = int((inputs["mm_token_type_ids"] != 0).sum())
    unit = getattr(getattr(adapter, "processor", None), "merge_size", 2) ** 2
    features = sum(int(inputs[key].prod(-1).sum()) // unit for key in ("image_grid_thw", "video_grid_thw")
                   if key in inputs)
    return tokens, features


def _token_runs(prompt: EncodedPrompt) -> list[tuple[int, int, int]]:
    """(kind, start, end) of the prompt's runs of one token kind: 0 text, 1 image, 2 video, -1 a placeholder that
    becomes embeddings (a family without mm_token_type_ids)."""
    ids = prompt.inputs["input_ids"][0].tolist()
    if "mm_token_type_ids" in prompt.inputs:
        kinds = prompt.inputs["mm_token_type_ids"][0].tolist()
    else:
        kinds = [-1 if i < 0 else 0 for i in ids]
    runs, start = [], 0
    for kind, run in groupby(kinds):
        length = len(list(run))
        runs.append((kind, start, start + length))
        start += length
    return runs


def render(inspection: Inspection, adapter, *, model: Path) -> str:
    """The report `framethink inspect` prints."""
    prompt, tensors = inspection.prompt, inspection.tensors
    record, meta = inspection.record, prompt.meta
    lines = [f"model: {model} ({type(adapter).__name__}, template {adapter.default_template!r})",
             f"{record.media_kind}: {record.media[0]}"]
    shown = tensors["frame_indices"].tolist()
    if record.media_kind == "video":
        times = meta.get("timestamps", [])
        rule = adapter.frames
        lines.append(f"frame rule: {rule.rule} ("
                     + (f"{rule.num_frames} frames over the clip" if rule.rule == "uniform"
                        else f"{rule.fps} fps, {rule.min_frames}..{rule.max_frames} frames") + ")")
        lines.append(f"sampled: {len(shown)} frames at {float(tensors['sample_fps']):.3f} fps; indices in the video "
                     f"(temporal order): {meta['indices']}")
        lines.append("times (s): " + " ".join(f"{t:.2f}" for t in times))
        if prompt.frame_order != "ordered":
            lines.append(f"frame order {prompt.frame_order}: the pixels hold frames {shown} in this order; "
                         "the timestamps and positions stay those of the ordered clip")
    lines.append(_pixel_line(adapter, tensors))
    lines.append("")
    lines.append("prompt (vision blocks summarised):")
    lines.append(_prompt_text(inspection, adapter))
    lines.append("")
    for name, value in tensors.items():
        lines.append(f"  {name:<22} {str(list(value.shape)):<18} {str(value.dtype).removeprefix('torch.')}")
    status = "OK" if inspection.vision_tokens == inspection.vision_features else "MISMATCH"
    lines.append(f"vision tokens in the prompt: {inspection.vision_tokens}; features from the vision encoder: "
                 f"{inspection.vision_features} -> {status}")
    if inspection.positions_counted_by_model:
        lines.append("position_ids: none passed, the model counts them over the packed sequence (saved as counted)")
    if inspection.pack_error:
        lines.append(f"the forward's inputs could not be built: {inspection.pack_error}")
    return "\n".join(lines)


def _pixel_line(adapter, tensors: dict[str, torch.Tensor]) -> str:
    """The pixel bounds in use and the size the frames were resized to."""
    processor = getattr(adapter, "processor", None)
    bounds = ""
    if processor is not None and hasattr(processor, "__dataclass_fields__"):
        bounds = ", ".join(f"{f.name} {getattr(processor, f.name):,}" for f in fields(processor)
                           if f.name.endswith("_pixels"))
    sized = ""
    patch = getattr(processor, "patch_size", None)
    for key in ("video_grid_thw", "image_grid_thw"):
        if key in tensors and patch:
            t, h, w = tensors[key][0].tolist()
            sized = f"; {key.split('_')[0]} frames resized to {h * patch}x{w * patch} ({t}x{h}x{w} patches)"
            break
    if not sized and "pixel_values_videos" in tensors and tensors["pixel_values_videos"].dim() == 5:
        size = tensors["pixel_values_videos"].shape[-1]
        sized = f"; frames resized to {size}x{size}"
    return f"pixels: {bounds or 'fixed by the model'}{sized}"


def _prompt_text(inspection: Inspection, adapter) -> str:
    """The prompt's text with every run of vision tokens replaced by one bracketed summary."""
    prompt, tensors = inspection.prompt, inspection.tensors
    ids = prompt.inputs["input_ids"][0].tolist()
    runs = _token_runs(prompt)
    video_blocks = [r for r in runs if r[0] == 2]
    grid = tensors.get("video_grid_thw")
    shown = tensors["frame_indices"].tolist()
    times = dict(zip(prompt.meta.get("indices", []), prompt.meta.get("timestamps", [])))
    parts, video_block, image = [], 0, 0
    for kind, start, end in runs:
        if kind == 0:
            parts.append(adapter.tokenizer.decode(ids[start:end], skip_special_tokens=False))
            continue
        count = end - start
        if kind == -1:
            extra = inspection.vision_features
            parts.append(f"[{inspection.record.media_kind}: {len(shown)} frames -> {extra} embeddings]")
        elif kind == 1:
            parts.append(f"[image: {count} tokens, grid {tensors['image_grid_thw'][image].tolist()}]")
            image += 1
        else:
            parts.append(_video_block(video_block, len(video_blocks), count, grid, shown, times))
            video_block += 1
    return "".join(parts)


def _video_block(k: int, n_blocks: int, count: int, grid: torch.Tensor, shown: list[int],
                 times: dict[int, float]) -> str:
    """Summary of the k-th of n video token runs: one run per temporal patch (Qwen3-VL) or one for the whole clip.
    `shown` are the frames of the pixels in the order the model sees them, `times` each frame's time in seconds."""
    t, h, w = grid[0].tolist()
    patches = t // n_blocks  # temporal patches in this run
    per_patch = math.ceil(len(shown) / t)  # frames per temporal patch (the last one may repeat its frame)
    frames = shown[k * patches * per_patch:(k + 1) * patches * per_patch]
    when = ", ".join(f"{times[f]:.2f}" for f in frames)
    return f"[video block {k + 1}/{n_blocks}: frames {frames} (at {when} s), {count} tokens, grid {patches}x{h}x{w}]"


def save_inspection(inspection: Inspection, out: str | Path) -> Path:
    """Write the forward's tensors (`Inspection.tensors`) to the safetensors file `out`."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: expected a .safetensors file")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: value.contiguous() for name, value in inspection.tensors.items()}, str(out),
              metadata={"record": str(inspection.record.media[0]), "frame_order": inspection.prompt.frame_order})
    return out


def run_inspect(model: Path, *, video: Path | None, image: Path | None, question: str | None, frames: int | None,
                fps: float | None, max_pixels: int | None, frame_order: str, seed: int, out: Path | None,
                device: str = "cpu") -> int:
    """`framethink inspect`: print the report, save the tensors to `out` if given. Exit status 1 when the prompt's
    vision tokens and the encoder's features disagree or the forward's inputs cannot be built, else 0."""
    inspection = inspect_inputs(model, video=video, image=image, question=question, frames=frames, fps=fps,
                                max_pixels=max_pixels, frame_order=frame_order, seed=seed, device=device)
    print(inspection.report)
    if out is not None:
        print(f"wrote {save_inspection(inspection, out)}")
    return int(inspection.pack_error is not None or inspection.vision_tokens != inspection.vision_features)
