"""The synthetic temporal video-QA set: records (docs/data.md#record-formats), decoded clips agree with the answers, balance,
determinism, disjoint splits, and temporal items that shuffling makes ambiguous."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from framethink.data.synth import (
    COLORS,
    DIRECTIONS,
    LETTERS,
    OPPOSITE,
    SHAPES,
    TASKS,
    Scene,
    answer_from_scenes,
    build_items,
    render_scene,
    write_synthetic_dataset,
)
from framethink.data.video import permute_frames, sample_frames
from framethink.errors import ConfigError

FIELDS = {"problem_id", "problem", "data_type", "problem_type", "options", "solution", "path", "data_source", "process"}
PALETTE = np.array(list(COLORS.values()), dtype=float)  # [6, 3]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = write_synthetic_dataset(out, n_train=8, n_test=4, seed=0)
    return out, summary


def _colour_name(rgb: np.ndarray) -> str:
    """Nearest answer colour to an RGB triple, which must lie within 8 levels of it."""
    distances = np.abs(PALETTE - rgb).max(axis=1)
    assert distances.min() <= 8, rgb
    return list(COLORS)[int(distances.argmin())]


def _object_mask(frame: np.ndarray) -> np.ndarray:
    return frame.max(axis=2) > 128  # [H, W] object pixels on the black background


def _read_answer(task: str, frames: np.ndarray) -> str:
    """What the decoded pixels say, read without the scene descriptions. frames: [T, H, W, 3]"""
    if task in ("color_first", "color_last"):
        names = [_colour_name(frame.reshape(-1, 3).mean(axis=0)) for frame in frames]
        switches = [i for i in range(1, len(names)) if names[i] != names[i - 1]]
        assert len(switches) == 1 and 2 <= switches[0] <= len(names) - 2  # one switch, >= 2 frames of each colour
        return names[0] if task == "color_first" else names[-1]
    if task in ("shape_first", "shape_last"):
        size = frames.shape[1]
        references = {s: render_scene(Scene(shape=s, x=size // 2, y=size // 2, r=size * 3 // 8), size) for s in SHAPES}
        names = [min(SHAPES, key=lambda s: np.abs(references[s].astype(int) - frame).mean()) for frame in frames]
        assert len({n for n in names}) == 2
        return names[0] if task == "shape_first" else names[-1]
    if task == "count":
        shown = [bool(_object_mask(frame).any()) for frame in frames]
        return str(sum(1 for i, on in enumerate(shown) if on and (i == 0 or not shown[i - 1])))
    if task == "direction":
        first, last = (np.argwhere(_object_mask(frame)).mean(axis=0) for frame in (frames[0], frames[-1]))
        dy, dx = last - first
        if abs(dx) > abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"
    assert task == "color"
    return _colour_name(frames[0][_object_mask(frames[0])].mean(axis=0))


def test_records_and_decoded_answers(dataset):
    out, summary = dataset
    for split, per_task in (("train", 8), ("test", 4)):
        records = json.loads((out / f"{split}.json").read_text())
        assert [r["problem_id"] for r in records] == list(range(per_task * len(TASKS)))
        assert Counter(r["data_source"] for r in records) == {task: per_task for task in TASKS}
        for record in records:
            assert set(record) == FIELDS
            assert record["data_type"] == "video" and isinstance(record["problem"], str)
            assert record["path"] == f"./videos/{split}/{record['problem_id']}.mp4"
            gold = re.fullmatch(r"<answer>(.+)</answer>", record["solution"]).group(1)
            if record["data_source"] == "count":
                assert record["problem_type"] == "numerical" and record["options"] == [] and gold.isdigit()
                answer = gold
            else:
                assert record["problem_type"] == "multiple choice"
                assert [o[:3] for o in record["options"]] == ["A. ", "B. ", "C. ", "D. "]
                answer = record["options"][LETTERS.index(gold)][3:]
            clip = sample_frames(out / record["path"], rule="qwen", fps=2.0, max_frames=16)
            assert clip.indices.tolist() == list(range(16)) and clip.fps == 2.0  # every rendered frame is sampled
            assert clip.frames.shape == (16, 56, 56, 3)
            assert _read_answer(record["data_source"], clip.frames) == answer, record
    assert "color_first" in summary and "total" in summary and " 56 " in summary


def test_deterministic(tmp_path):
    kwargs = dict(n_train=2, n_test=1, num_frames=8, tasks=["color_first", "count", "direction"])
    write_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    for split in ("train", "test"):
        text = (tmp_path / "a" / f"{split}.json").read_bytes()
        assert text == (tmp_path / "b" / f"{split}.json").read_bytes()
        for record in json.loads(text):
            frames_a = sample_frames(tmp_path / "a" / record["path"], max_frames=8).frames
            frames_b = sample_frames(tmp_path / "b" / record["path"], max_frames=8).frames
            np.testing.assert_array_equal(frames_a, frames_b)
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()


def test_balanced():
    splits = build_items(list(TASKS), n_train=48, n_test=24, seed=1, num_frames=16, size=56)
    values = {"color_first": list(COLORS), "color_last": list(COLORS), "shape_first": SHAPES, "shape_last": SHAPES,
              "direction": DIRECTIONS, "color": list(COLORS)}
    for split, per_task in (("train", 48), ("test", 24)):
        for task in TASKS:
            items = [item for item in splits[split] if item.task == task]
            assert len(items) == per_task
            if task == "count":
                counts = Counter(item.answer for item in items)
                assert set(counts) == {"1", "2", "3", "4", "5"} and max(counts.values()) - min(counts.values()) <= 1
                continue
            letters = Counter(item.options.index(item.answer) for item in items)
            assert set(letters) == {0, 1, 2, 3} and max(letters.values()) - min(letters.values()) <= 1
            golds = Counter(item.answer for item in items)
            assert set(golds) == set(values[task]) and max(golds.values()) - min(golds.values()) <= 1
            if split == "train":  # no gold value prefers a letter: every pair in the first 4 * len(values) items
                block = build_items([task], n_train=4 * len(values[task]), n_test=0, seed=1, num_frames=16, size=56)
                pairs = {(item.answer, item.options.index(item.answer)) for item in block["train"]}
                assert len(pairs) == 4 * len(values[task])


def test_splits_disjoint():
    # 4 frames leave one switch point, so identical items would be common if nothing kept them apart
    splits = build_items(["color_first"], n_train=300, n_test=100, seed=0, num_frames=4, size=28)
    train, test = set(splits["train"]), set(splits["test"])
    assert len(train) == 300 and len(test) == 100 and not train & test


def test_answers_follow_from_scenes():
    splits = build_items(list(TASKS), n_train=20, n_test=0, seed=2, num_frames=8, size=56)
    for item in splits["train"]:
        assert len(item.scenes) == 8
        assert answer_from_scenes(item.task, item.scenes) == item.answer
        if item.task != "count":
            assert item.answer in item.options and len(set(item.options)) == 4


def test_shuffled_frames_make_temporal_items_ambiguous():
    splits = build_items(list(TASKS), n_train=20, n_test=0, seed=3, num_frames=16, size=56)
    for item in splits["train"]:
        answers = {answer_from_scenes(item.task, [item.scenes[i] for i in permute_frames(np.arange(16), seed)[1]])
                   for seed in range(40)}
        if not TASKS[item.task]:
            assert answers == {item.answer}  # the control task survives any order
            continue
        if item.task == "count":
            assert len(answers) >= 2
            continue
        assert len(answers & set(item.options)) >= 2, item  # shuffled frames fit at least two options
        reversed_answer = answer_from_scenes(item.task, item.scenes[::-1])
        assert reversed_answer != item.answer and reversed_answer in item.options
        if item.task == "direction":
            assert reversed_answer == OPPOSITE[item.answer]


def test_count_layout():
    splits = build_items(["count"], n_train=40, n_test=0, seed=4, num_frames=16, size=56)
    for item in splits["train"]:
        shown = [s.shape is not None for s in item.scenes]
        runs = "".join("x" if on else "." for on in shown).split(".")
        lengths = [len(run) for run in runs if run]
        assert len(lengths) == int(item.answer) and set(lengths) <= {1, 2} and 2 in lengths
        assert shown.count(False) >= int(item.answer)  # enough blanks for count + 1 appearances when shuffled


def test_render_scene_shapes():
    size, r = 56, 21
    areas = {s: int((render_scene(Scene(shape=s, x=28, y=28, r=r), size).max(axis=2) == 255).sum()) for s in SHAPES}
    assert areas["square"] == (2 * r) ** 2
    assert areas["circle"] == pytest.approx(np.pi * r**2, rel=0.03)
    assert areas["diamond"] == pytest.approx(2 * r**2, rel=0.05)
    assert areas["triangle"] == pytest.approx(2 * r**2, rel=0.05)
    assert areas["cross"] == pytest.approx(20 * r**2 / 9, rel=0.08)
    triangle = render_scene(Scene(shape="triangle", x=28, y=28, r=r), size).max(axis=2) == 255
    assert triangle[8].sum() < triangle[47].sum()  # apex up
    square = render_scene(Scene(shape="square", color="blue", x=10, y=20, r=4), size)
    assert (square[16:24, 6:14] == [0, 0, 255]).all() and square[:16].max() == 0 and square[24:].max() == 0
    assert (render_scene(Scene(background="yellow"), size) == [255, 255, 0]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tasks": ["colour_first"]}, "each must be one of"),
        ({"tasks": ["count", "count"]}, "listed once"),
        ({"num_frames": 7}, "even and >= 4"),
        ({"num_frames": 2}, "even and >= 4"),
        ({"size": 27}, "frame size"),
        ({"n_train": -1}, ">= 0"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = dict(n_train=1, n_test=1, seed=0) | kwargs
    with pytest.raises(ConfigError, match=message):
        write_synthetic_dataset(tmp_path, **args)
