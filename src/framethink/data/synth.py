"""Synthetic temporal video QA in the Video-R1 record format (docs/data.md, "Record formats"), rendered with PyAV.

Each clip has `num_frames` frames of `size` x `size` pixels at CLIP_FPS = 2 frames per second. The Qwen-VL rule
samples at 2 fps (docs/inputs.md, "Frame sampling"), so with max_frames >= num_frames it keeps every rendered
frame, as does the uniform rule with num_frames frames: whatever a question depends on is always in the sampled
frames. Clips are lossless H.264, so decoded colours equal the rendered ones up to the YUV round trip, on any
machine.

Tasks (each record's `data_source`):
  color_first, color_last  the whole frame switches from one colour to another: which came first / last?
  shape_first, shape_last  a large white shape turns into another: which came first / last?
  count                    how many times does a circle appear? (each appearance lasts 1 or 2 frames)
  direction                which way does a small square move? (a tiny model does not learn it; real models can)
  color                    control: the colour of a static square, answerable from any single frame
Every temporal item is ambiguous once its frames are shuffled: its options hold the other colour or shape seen
and the reverse direction, and a shuffled count clip also fits count + 1 appearances.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from string import ascii_uppercase
from typing import Callable, NamedTuple

import numpy as np

from framethink.data.video import write_video
from framethink.errors import ConfigError

CLIP_FPS = 2
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
RGB = {**COLORS, "black": (0, 0, 0), "white": (255, 255, 255)}  # answer colours plus background and shape colour
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
LETTERS = "ABCD"
MAX_COUNT = 5
_MAX_TRIES = 1000  # draws for an item not seen before, before giving up

TASKS: dict[str, bool] = {  # task name -> temporal (the answer depends on the order of the frames)
    "color_first": True,
    "color_last": True,
    "shape_first": True,
    "shape_last": True,
    "count": True,
    "direction": True,
    "color": False,
}
QUESTIONS = {
    "color_first": "Which colour appeared first?",
    "color_last": "Which colour appeared last?",
    "shape_first": "Which shape appeared first?",
    "shape_last": "Which shape appeared last?",
    "count": "How many times did the circle appear?",
    "direction": "In which direction did the square move?",
    "color": "What colour is the square?",
}


class Scene(NamedTuple):
    """What one frame shows: a background colour and at most one object, centred at (x, y) pixels with
    half-size r."""

    background: str = "black"
    shape: str | None = None
    color: str = "white"
    x: int = 0
    y: int = 0
    r: int = 0


@dataclass(frozen=True)
class SynthItem:
    """One question: option texts in letter order (empty for numerical), the gold answer text, one scene per frame."""

    task: str
    problem: str
    options: tuple[str, ...]
    answer: str
    scenes: tuple[Scene, ...]


_MASKS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {  # offsets from the centre -> [H, W] bool
    "square": lambda dx, dy, r: (abs(dx) < r) & (abs(dy) < r),
    "circle": lambda dx, dy, r: dx**2 + dy**2 < r**2,
    "diamond": lambda dx, dy, r: abs(dx) + abs(dy) < r,
    "triangle": lambda dx, dy, r: (abs(dy) < r) & (2 * abs(dx) < dy + r),  # apex up
    "cross": lambda dx, dy, r: ((abs(dx) < r / 3) & (abs(dy) < r)) | ((abs(dy) < r / 3) & (abs(dx) < r)),
}


def render_scene(scene: Scene, size: int) -> np.ndarray:
    """Draw one frame. -> [size, size, 3] uint8"""
    frame = np.empty((size, size, 3), np.uint8)
    frame[:] = RGB[scene.background]
    if scene.shape is not None:
        ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, [H, W] each
        frame[_MASKS[scene.shape](xs - scene.x, ys - scene.y, scene.r)] = RGB[scene.color]
    return frame


def answer_from_scenes(task: str, scenes: tuple[Scene, ...] | list[Scene]) -> str:
    """The answer a viewer reads off these frames in this order ("" if they show no motion).

    Applied to a shuffled order it shows whether the question survives shuffling: a temporal item's shuffled
    orders give different answers, the control task's all give the same one.
    """
    first, last = scenes[0], scenes[-1]
    if task == "color_first":
        return first.background
    if task == "color_last":
        return last.background
    if task == "shape_first":
        return str(first.shape)
    if task == "shape_last":
        return str(last.shape)
    if task == "count":  # appearances = runs of frames showing the circle
        return str(sum(1 for i, s in enumerate(scenes) if s.shape and (i == 0 or not scenes[i - 1].shape)))
    if task == "direction":
        dx, dy = last.x - first.x, last.y - first.y
        if abs(dx) > abs(dy):
            return "right" if dx > 0 else "left"
        if abs(dy) > abs(dx):
            return "down" if dy > 0 else "up"  # image rows grow downwards
        return ""
    if task == "color":
        return first.color
    raise ConfigError(f"unknown synthetic task {task!r}; known: {', '.join(TASKS)}")


def make_item(task: str, rng: np.random.Generator, index: int, *, num_frames: int, size: int) -> SynthItem:
    """Draw item number `index` of a task. The index fixes the balanced parts, the gold answer and the gold
    letter, so that any run of consecutive indices is balanced in both."""
    if task not in _MAKERS:
        raise ConfigError(f"unknown synthetic task {task!r}; known: {', '.join(TASKS)}")
    return _MAKERS[task](task, rng, index, num_frames, size)


def build_items(
    tasks: list[str], *, n_train: int, n_test: int, seed: int, num_frames: int, size: int
) -> dict[str, list[SynthItem]]:
    """n_train and n_test items per task, split name -> items in file order.

    Each (split, task) draws from its own seeded stream; no item (frames, question and options) occurs twice,
    so the test split shares no item with the train split.
    """
    seen: set[SynthItem] = set()
    splits = {}
    for split_index, (split, count) in enumerate((("train", n_train), ("test", n_test))):
        items = []
        for task in tasks:
            rng = np.random.default_rng([seed, split_index, list(TASKS).index(task)])
            items += [_new_item(task, rng, index, num_frames, size, seen) for index in range(count)]
        order = np.random.default_rng([seed, split_index, len(TASKS)]).permutation(len(items))
        splits[split] = [items[i] for i in order]  # tasks interleaved
    return splits


def check_synthetic_settings(*, n_train: int, n_test: int, seed: int, num_frames: int, size: int, tasks: list[str],
                             cot: str) -> None:
    """The settings `write_synthetic_dataset` accepts (ConfigError naming the first bad one)."""
    unknown = [name for name in tasks if name not in TASKS]
    if unknown or not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"tasks {tasks}: each must be one of {', '.join(TASKS)}, listed once")
    if num_frames < 4 or num_frames % 2:
        raise ConfigError(f"frames per clip must be even and >= 4 (qwen samples an even count), got {num_frames}")
    if size < 28 or size % 2:
        raise ConfigError(f"frame size must be even (4:2:0 video) and >= 28, got {size}")
    if cot not in COT_STYLES:
        raise ConfigError(f"chain-of-thought style {cot!r} is not one of {', '.join(COT_STYLES)}")
    if n_train < 0 or n_test < 0 or seed < 0:
        raise ConfigError(f"item counts and seed must be >= 0, got train={n_train}, test={n_test}, seed={seed}")


def write_synthetic_dataset(
    out: Path,
    *,
    n_train: int,
    n_test: int,
    seed: int,
    num_frames: int = 16,
    size: int = 56,
    tasks: list[str] | None = None,
    fixed_options: bool = False,
    cot: str = "sentences",
) -> str:
    """Render the synthetic temporal video-QA set: `out/train.json`, `out/test.json` (Video-R1 records, paths
    "./videos/<split>/<id>.mp4" relative to `out`) and the clips. n_train / n_test are per task.
    Same arguments -> byte-identical JSON and identical decoded frames. Returns a printable summary.
    `fixed_options`: multiple-choice items list every value of their task in one canonical order (A-F for
    colours) instead of four drawn options; the gold letter stays balanced because the gold value is.
    `cot`: the chains of thought as sentences or in the short style (`describe`).
    """
    names = list(TASKS) if tasks is None else list(tasks)
    check_synthetic_settings(n_train=n_train, n_test=n_test, seed=seed, num_frames=num_frames, size=size,
                             tasks=names, cot=cot)
    out = Path(out)
    splits = build_items(names, n_train=n_train, n_test=n_test, seed=seed, num_frames=num_frames, size=size)
    counts: dict[str, Counter] = {}
    for split, items in splits.items():
        (out / "videos" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for problem_id, item in enumerate(items):
            path = f"./videos/{split}/{problem_id}.mp4"
            write_video(out / path, np.stack([render_scene(scene, size) for scene in item.scenes]), CLIP_FPS)
            records.append(_record(item, problem_id, path, fixed_options, cot))
        (out / f"{split}.json").write_text(json.dumps(records, indent=2) + "\n")
        counts[split] = Counter(item.task for item in items)
    lines = [
        f"synthetic video QA in {out}: {num_frames} frames per clip at {CLIP_FPS} fps ({num_frames / CLIP_FPS:g} s), "
        f"{size}x{size} px, seed {seed}",
        f"sample with fps {CLIP_FPS} and max_frames >= {num_frames} to keep every frame",
        f"{'task':<12} {'temporal':>8} {'train':>6} {'test':>6}",
    ]
    for name in names:
        lines.append(f"{name:<12} {str(TASKS[name]).lower():>8} {counts['train'][name]:>6} {counts['test'][name]:>6}")
    lines.append(f"{'total':<12} {'':>8} {len(splits['train']):>6} {len(splits['test']):>6}")
    return "\n".join(lines)


def _new_item(task: str, rng: np.random.Generator, index: int, num_frames: int, size: int, seen: set) -> SynthItem:
    for _ in range(_MAX_TRIES):
        item = make_item(task, rng, index, num_frames=num_frames, size=size)
        if item not in seen:
            seen.add(item)
            return item
    raise ConfigError(
        f"task {task}: no new distinct item after {_MAX_TRIES} draws at {num_frames} frames; ask for fewer items"
    )


VOCABULARY: dict[str, tuple[str, ...]] = {  # every value a task can ask about, in canonical order
    "color_first": tuple(COLORS), "color_last": tuple(COLORS), "color": tuple(COLORS),
    "shape_first": SHAPES, "shape_last": SHAPES, "direction": DIRECTIONS,
}


def option_texts(item: SynthItem, fixed_options: bool) -> tuple[str, ...]:
    """The item's four drawn options, or with `fixed_options` every value of its task in canonical order
    (so each value always has the same letter and reading the letter off the option list is not part of the task)."""
    return VOCABULARY[item.task] if fixed_options and item.options else item.options


ASKED = {  # what the chain of thought says the question asks, restating it next to where the answer is chosen
    "color_first": "which colour came first", "color_last": "which colour came last",
    "shape_first": "which shape came first", "shape_last": "which shape came last",
    "color": "the colour of the square", "direction": "where the square moved", "count": "how often the circle appeared",
}
COT_STYLES = ("sentences", "short")
KEYWORD = {  # the short chain of thought restates the question in one word
    "color_first": "first", "color_last": "last", "shape_first": "first", "shape_last": "last",
    "color": "colour", "direction": "direction", "count": "count",
}


def describe(item: SynthItem, options: tuple[str, ...], style: str = "sentences") -> str:
    """A chain of thought that restates the question, describes the clip and names the option letter of what
    it saw, but does not say which option answers the question:
    `<think>the question asks which colour came first. the clip starts red and ends blue. red is A. blue is C.</think>`,
    or with `style="short"` the same facts in the fewest tokens: `<think>first? red A then blue C.</think>`.
    The cold start can teach it while the choice of answer is left to reward."""
    first, last = item.scenes[0], item.scenes[-1]
    if item.task.startswith("color_"):
        seen = [first.background, last.background]
        text = f"the clip starts {seen[0]} and ends {seen[1]}."
    elif item.task.startswith("shape_"):
        seen = [first.shape, last.shape]
        text = f"the clip starts with a {seen[0]} and ends with a {seen[1]}."
    elif item.task == "color":
        seen = [first.color]
        text = f"the square is {seen[0]}."
    elif item.task == "direction":
        seen = [item.answer]
        text = f"the square moves {seen[0]}."
    else:  # count: the description is the number of appearances
        seen = []
        text = f"the circle appears {item.answer} times."
    if style == "short":
        facts = " then ".join(f"{value} {ascii_uppercase[options.index(value)]}" for value in seen) or item.answer
        return f"<think>{KEYWORD[item.task]}? {facts}.</think>"
    for value in seen:
        text += f" {value} is {ascii_uppercase[options.index(value)]}."
    return f"<think>the question asks {ASKED[item.task]}. {text}</think>"


def _record(item: SynthItem, problem_id: int, path: str, fixed_options: bool, cot: str) -> dict:
    """The Video-R1 record of one item, with a `process` chain of thought (the CoT-SFT format)."""
    texts = option_texts(item, fixed_options)
    if texts:
        answer = ascii_uppercase[texts.index(item.answer)]
        options = [f"{letter}. {text}" for letter, text in zip(ascii_uppercase, texts)]
    else:
        answer, options = item.answer, []
    return {
        "problem_id": problem_id,
        "problem": item.problem,
        "data_type": "video",
        "problem_type": "multiple choice" if item.options else "numerical",
        "options": options,
        "solution": f"<answer>{answer}</answer>",
        "path": path,
        "data_source": item.task,
        "process": describe(item, texts, cot),
    }


def _pick(rng: np.random.Generator, values: list[str] | tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def _even(rng: np.random.Generator, low: int, high: int) -> int:
    """An even integer in [low, high]: objects on even pixels keep their colour exact under 4:2:0 chroma."""
    return 2 * int(rng.integers(math.ceil(low / 2), high // 2 + 1))


def _balanced(values: list[str] | tuple[str, ...], index: int) -> tuple[str, int]:
    """Gold value and gold letter position of item `index`. Both cycle, so any run of indices is balanced within
    one; the position shifts by one every lcm(4, len(values)) indices, so that each block of 4 * len(values)
    indices (from 0) holds every (value, position) pair once."""
    cycle = math.lcm(len(LETTERS), len(values))
    return values[index % len(values)], (index + index // cycle) % len(LETTERS)


def _options(
    rng: np.random.Generator, position: int, gold: str, required: list[str], pool: list[str] | tuple[str, ...]
) -> tuple[str, ...]:
    """Four option texts: `gold` at `position`, the `required` distractors, the rest drawn from `pool`."""
    rest = [value for value in pool if value != gold and value not in required]
    others = required + [rest[i] for i in rng.permutation(len(rest))[: len(LETTERS) - 1 - len(required)]]
    others = [others[i] for i in rng.permutation(len(others))]
    others.insert(position, gold)
    return tuple(others)


def _first_last(task: str, rng: np.random.Generator, index: int, num_frames: int, size: int) -> SynthItem:
    """colour_* / shape_*: the clip shows one value, then switches to another for the rest."""
    values = list(COLORS) if task.startswith("color") else list(SHAPES)
    gold, position = _balanced(values, index)
    other = _pick(rng, [value for value in values if value != gold])
    before, after = (gold, other) if task.endswith("first") else (other, gold)
    switch = int(rng.integers(2, num_frames - 1))  # frames before the switch: at least 2 of each value
    if task.startswith("color"):  # whole-frame colour: the easiest temporal signal there is
        scenes = (Scene(background=before),) * switch + (Scene(background=after),) * (num_frames - switch)
    else:
        centre, r = size // 2, size * 3 // 8
        scenes = (Scene(shape=before, x=centre, y=centre, r=r),) * switch + (
            Scene(shape=after, x=centre, y=centre, r=r),
        ) * (num_frames - switch)
    return SynthItem(task, QUESTIONS[task], _options(rng, position, gold, [other], values), gold, scenes)


def _count(task: str, rng: np.random.Generator, index: int, num_frames: int, size: int) -> SynthItem:
    """count: appearances of 1 or 2 frames, separated by blank frames."""
    count = 1 + index % min(MAX_COUNT, num_frames // 3)
    lengths = rng.integers(1, 3, size=count)  # [count] frames per appearance
    lengths[rng.integers(count)] = 2  # more circle frames than appearances: shuffled, they fit count + 1 too
    spare = num_frames - int(lengths.sum()) - (count - 1)  # blanks beyond one between appearances; >= 1 as 3*count <= F
    gaps = rng.multinomial(spare, np.full(count + 1, 1 / (count + 1)))  # [count + 1] before, between, after
    gaps[1:-1] += 1
    r = size // 6
    circle = Scene(shape="circle", x=_even(rng, r, size - r), y=_even(rng, r, size - r), r=r)
    scenes: list[Scene] = []
    for gap, length in zip(gaps, lengths):
        scenes += [Scene()] * int(gap) + [circle] * int(length)
    scenes += [Scene()] * int(gaps[-1])
    return SynthItem(task, QUESTIONS[task], (), str(count), tuple(scenes))


def _direction(task: str, rng: np.random.Generator, index: int, num_frames: int, size: int) -> SynthItem:
    """direction: a small square crosses at least half the frame in a straight line."""
    gold, position = _balanced(DIRECTIONS, index)
    r = 2 * max(1, size // 28)
    low, high = r, size - r  # centre positions that keep the square inside
    reach = (high - low) // 4
    path = np.linspace(_even(rng, low, low + reach), _even(rng, high - reach, high), num_frames)  # [T] increasing
    path = 2 * np.round(path / 2).astype(int)
    if gold in ("left", "up"):
        path = path[::-1]
    across, color = _even(rng, low, high), _pick(rng, list(COLORS))
    if gold in ("left", "right"):
        scenes = tuple(Scene(shape="square", color=color, x=int(p), y=across, r=r) for p in path)
    else:
        scenes = tuple(Scene(shape="square", color=color, x=across, y=int(p), r=r) for p in path)
    return SynthItem(task, QUESTIONS[task], _options(rng, position, gold, [OPPOSITE[gold]], DIRECTIONS), gold, scenes)


def _color(task: str, rng: np.random.Generator, index: int, num_frames: int, size: int) -> SynthItem:
    """color (control): a static square of the gold colour."""
    gold, position = _balanced(list(COLORS), index)
    r = _even(rng, size // 8, size // 4)
    scene = Scene(shape="square", color=gold, x=_even(rng, r, size - r), y=_even(rng, r, size - r), r=r)
    options = _options(rng, position, gold, [], list(COLORS))
    return SynthItem(task, QUESTIONS[task], options, gold, (scene,) * num_frames)


_MAKERS = {
    "color_first": _first_last,
    "color_last": _first_last,
    "shape_first": _first_last,
    "shape_last": _first_last,
    "count": _count,
    "direction": _direction,
    "color": _color,
}
