"""Qwen3-VL / Qwen3.5 inputs without torchvision, bit-exact against transformers' `Qwen3VLProcessor` loaded with
AutoProcessor from each family's tiny checkpoint: frame sampling by fps, the clip-wide pixel budget (with and without
the per-frame cap), the timestamp text of every temporal patch, pixels, grids and mm_token_type_ids."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer

from framethink.data.video import qwen3_frame_indices, sample_frames
from framethink.errors import ConfigError
from framethink.models.qwen3_vl.inputs import (
    Qwen3VisionProcessor,
    VideoClip,
    build_qwen3_inputs,
    temporal_patch_times,
    video_max_pixels,
    video_smart_resize,
)
from framethink.models.qwen3_vl.tiny import TINY_IMAGE_PIXELS, TINY_VIDEO_PIXELS, build_tiny_qwen3
from helpers_video import decoded_indices, index_frames, write_video

ARCHS = ("qwen3-vl", "qwen3.5")
QUESTION = {"type": "text", "text": "Which colour comes first?\nOptions:\nA. red\nB. blue\n"}
# Budgets that make the test clips resize: images 4..16 merged tokens; a clip 8..48 merged-patch areas in all.
BUDGETS = dict(image_min_pixels=4 * 32 * 32, image_max_pixels=16 * 32 * 32,
               video_min_pixels=8 * 32 * 32, video_max_pixels=48 * 32 * 32)


@pytest.fixture(scope="module", params=ARCHS)
def tiny_dir(request, tmp_path_factory):
    return build_tiny_qwen3(request.param, tmp_path_factory.mktemp(request.param.replace(".", "")))


def _video(total: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (total, h, w, 3), dtype=np.uint8)


def _official_kwargs(processor: Qwen3VisionProcessor) -> dict:
    """The same settings as per-call kwargs of transformers' processor."""
    return dict(
        images_kwargs={"size": {"shortest_edge": processor.image_min_pixels, "longest_edge": processor.image_max_pixels}},
        videos_kwargs={"size": {"shortest_edge": processor.video_min_pixels, "longest_edge": processor.video_max_pixels},
                       "fps": processor.fps, "cap_pixels_per_frame": processor.cap_pixels_per_frame},
    )


def _assert_equal(mine: dict, expected) -> None:
    assert set(mine) == set(expected.keys())
    for key, value in expected.items():
        assert mine[key].dtype == value.dtype, key
        assert torch.equal(mine[key], value), key


# (total frames, video fps, sampling fps, height, width, per-frame cap): sampled counts 4, 7 (odd), 3 (odd, all
# frames), 12, 5 (odd); frames that shrink to the clip budget, grow to its minimum or start below one patch.
VIDEOS = {
    "4-of-9-shrink": (9, 4.0, 2.0, 240, 320, False),
    "7-of-75-odd": (75, 10.0, 1.0, 120, 90, False),
    "3-of-3-odd-all-frames": (3, 3.0, 2.0, 50, 70, False),
    "12-of-100-capped": (100, 24.0, 3.0, 240, 320, True),
    "5-of-50-grow": (50, 5.0, 0.5, 20, 30, False),
}


@pytest.mark.parametrize("case", VIDEOS)
def test_video_inputs_bit_exact(case, tiny_dir):
    total, video_fps, fps, h, w, cap = VIDEOS[case]
    video = _video(total, h, w, seed=total)
    processor = Qwen3VisionProcessor.from_pretrained(tiny_dir, **BUDGETS, fps=fps, cap_pixels_per_frame=cap)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    indices = processor.sample_indices(total, video_fps)
    mine = build_qwen3_inputs(tokenizer, processor, messages, videos=[VideoClip.from_indices(video[indices], indices, video_fps)])

    official = AutoProcessor.from_pretrained(tiny_dir)
    text = official.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = _official_kwargs(processor)
    kwargs["videos_kwargs"].update(video_metadata=[{"total_num_frames": total, "fps": video_fps}], do_sample_frames=True)
    expected = official(text=[text], videos=[video], return_tensors="pt", **kwargs)
    _assert_equal(mine, expected)

    grid = mine["video_grid_thw"][0]
    assert grid[0] == (len(indices) + 1) // 2
    times = temporal_patch_times(indices / video_fps)
    decoded = tokenizer.decode(mine["input_ids"][0])
    assert decoded.count("<|vision_start|>") == len(times) and f"<{times[-1]:.1f} seconds>" in decoded
    frames_resized = mine["pixel_values_videos"].shape[0] // int(grid.prod())
    assert frames_resized == 1


def test_one_frame_video_is_one_temporal_patch(tiny_dir):
    """transformers refuses a one-frame clip; framethink pads it to two frames as the processor pads odd counts,
    which equals transformers on the padded clip with the index repeated."""
    video = _video(1, 100, 60, seed=3)
    processor = Qwen3VisionProcessor.from_pretrained(tiny_dir, **BUDGETS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    indices = processor.sample_indices(1, 30.0)
    assert indices.tolist() == [0]
    mine = build_qwen3_inputs(tokenizer, processor, messages, videos=[VideoClip.from_indices(video, indices, 30.0)])

    official = AutoProcessor.from_pretrained(tiny_dir)
    text = official.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = _official_kwargs(processor)
    with pytest.raises(ValueError, match="must be larger than temporal_factor"):
        official(text=[text], videos=[video], return_tensors="pt", **kwargs,
                 video_metadata=[{"total_num_frames": 1, "fps": 30.0}])
    kwargs["videos_kwargs"].update(do_sample_frames=False,
                                   video_metadata=[{"total_num_frames": 1, "fps": 30.0, "frames_indices": [0, 0]}])
    expected = official(text=[text], videos=[np.concatenate([video, video])], return_tensors="pt", **kwargs)
    _assert_equal(mine, expected)
    assert mine["video_grid_thw"][0, 0] == 1
    assert "<0.0 seconds><|vision_start|>" in tokenizer.decode(mine["input_ids"][0])


def test_images_and_video_in_one_prompt_bit_exact(tiny_dir):
    # 50x70 rounds, 20x30 grows to the image minimum, 300x200 shrinks to the maximum
    images = [_video(1, 50, 70, 1)[0], _video(1, 20, 30, 2)[0], _video(1, 300, 200, 3)[0]]
    video = _video(20, 64, 48, seed=4)
    processor = Qwen3VisionProcessor.from_pretrained(tiny_dir, **BUDGETS)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    content = [{"type": "image"}, {"type": "video"}, {"type": "image"}, {"type": "image"}, QUESTION]
    messages = [{"role": "user", "content": content}]
    indices = processor.sample_indices(20, 8.0)
    clip = VideoClip.from_indices(video[indices], indices, 8.0)
    mine = build_qwen3_inputs(tokenizer, processor, messages, images=images, videos=[clip])

    official = AutoProcessor.from_pretrained(tiny_dir)
    text = official.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    kwargs = _official_kwargs(processor)
    kwargs["videos_kwargs"]["video_metadata"] = [{"total_num_frames": 20, "fps": 8.0}]
    expected = official(text=[text], images=images, videos=[video], return_tensors="pt", **kwargs)
    _assert_equal(mine, expected)
    assert mine["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6], [1, 8, 6]]
    assert mine["pixel_values"].shape[1] == 3 * 2 * 16 * 16


def test_text_only_prompt_bit_exact(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": [QUESTION]}]
    mine = build_qwen3_inputs(tokenizer, Qwen3VisionProcessor.from_pretrained(tiny_dir), messages)
    official = AutoProcessor.from_pretrained(tiny_dir)
    text = official.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    _assert_equal(mine, official(text=[text], return_tensors="pt"))


def test_sample_frame_indices_by_hand():
    # 9 frames at 4 fps sampled at 2 fps: int(9 / 4 * 2) = 4 frames at round(linspace(0, 8, 4)) = 0, 2.67, 5.33, 8
    assert qwen3_frame_indices(9, 4.0, fps=2.0).tolist() == [0, 3, 5, 8]
    # 75 frames at 10 fps, 1 fps: 7 (odd, never rounded to the temporal patch)
    assert qwen3_frame_indices(75, 10.0, fps=1.0).tolist() == [0, 12, 25, 37, 49, 62, 74]
    # fewer than min_frames: the minimum 4, but never more than the video has
    assert qwen3_frame_indices(3, 30.0).tolist() == [0, 1, 2]
    assert qwen3_frame_indices(40, 30.0).tolist() == [0, 13, 26, 39]
    # max_frames caps a long video
    assert len(qwen3_frame_indices(3000, 30.0, fps=2.0, max_frames=16)) == 16
    with pytest.raises(ValueError, match="fps"):
        qwen3_frame_indices(10, 0.0)


def test_frame_rule_qwen3_decodes_those_frames(tmp_path):
    """Frame rule "qwen3" samples a video file by the same indices (inside MVBench-style bounds too)."""
    video = write_video(tmp_path / "clip.mp4", index_frames(40), 10)  # 4 s at 10 fps
    sampled = sample_frames(video, rule="qwen3", fps=1.0, min_frames=4, max_frames=768)
    assert sampled.indices.tolist() == qwen3_frame_indices(40, 10.0, fps=1.0).tolist() == [0, 13, 26, 39]
    assert decoded_indices(sampled.frames).tolist() == [0, 13, 26, 39]
    assert sampled.timestamps.tolist() == [0.0, 1.3, 2.6, 3.9]
    bounded = sample_frames(video, rule="qwen3", fps=3.0, start=1.0, end=3.0)  # frames 10 .. 30
    assert bounded.indices.tolist() == (10 + qwen3_frame_indices(21, 10.0, fps=3.0)).tolist()
    assert len(bounded.indices) == 6


def test_temporal_patch_times_by_hand():
    # frames 0, 3, 5, 8 at 4 fps: pairs (0 + 0.75) / 2 and (1.25 + 2) / 2
    assert temporal_patch_times(np.array([0, 3, 5, 8]) / 4.0) == [0.375, 1.625]
    # an odd count repeats the last frame: (0.6 + 0.6) / 2
    assert temporal_patch_times(np.array([0, 3, 6]) / 10.0) == [0.15, 0.6]
    with pytest.raises(ValueError, match="finite"):
        temporal_patch_times([0.0, float("inf")])
    with pytest.raises(ValueError, match="real fps"):
        VideoClip.from_indices(_video(2, 32, 32, 0), np.arange(2), 0.0)


def test_video_budget_by_hand():
    # 12 frames of 240x320 in a 48 * 32^2 clip budget: beta = sqrt(12*240*320 / 49152) = 4.33 -> 32 x 64 pixels
    assert video_smart_resize(12, 240, 320, min_pixels=8192, max_pixels=48 * 1024) == (32, 64)
    # the cap: per frame max(min(768 * 32^2, 49152 // 12), int(1.05 * 8192)) = 8601 pixels, * 12 frames
    assert video_max_pixels(12, min_pixels=8192, max_pixels=49152, cap_pixels_per_frame=True,
                            max_video_tokens=768, factor=32) == 8601 * 12
    assert video_max_pixels(12, min_pixels=8192, max_pixels=49152, cap_pixels_per_frame=False,
                            max_video_tokens=768, factor=32) == 49152
    # below one patch: 20x30 is first scaled to 32x48, then grows to the clip minimum
    assert video_smart_resize(2, 20, 30, min_pixels=8 * 1024, max_pixels=10**6) == (64, 96)


def test_shuffled_frames_keep_the_timestamp_text(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    processor = Qwen3VisionProcessor.from_pretrained(tiny_dir)
    video = _video(8, 64, 64, seed=5)
    indices = np.arange(8)
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    ordered = build_qwen3_inputs(tokenizer, processor, messages, videos=[VideoClip.from_indices(video, indices, 2.0)])
    shuffled = build_qwen3_inputs(tokenizer, processor, messages, videos=[VideoClip.from_indices(video[::-1].copy(), indices, 2.0)])
    assert torch.equal(ordered["input_ids"], shuffled["input_ids"])
    assert not torch.equal(ordered["pixel_values_videos"], shuffled["pixel_values_videos"])


def test_from_pretrained_reads_the_tiny_configs_and_refuses_unknown(tiny_dir, tmp_path):
    processor = Qwen3VisionProcessor.from_pretrained(tiny_dir)
    assert (processor.image_min_pixels, processor.image_max_pixels) == TINY_IMAGE_PIXELS
    assert (processor.video_min_pixels, processor.video_max_pixels) == TINY_VIDEO_PIXELS
    assert (processor.patch_size, processor.fps, processor.min_frames, processor.max_frames) == (16, 2.0, 4, 768)
    assert processor.image_mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="max_pixel"):
        Qwen3VisionProcessor.from_pretrained(tiny_dir, max_pixel=1)
    with pytest.raises(ConfigError, match="no preprocessor_config.json"):
        Qwen3VisionProcessor.from_pretrained(tmp_path)
    # transformers 5 may nest the sub-processors in processor_config.json
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(tmp_path)
    for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
        (tmp_path / name).unlink(missing_ok=True)
    assert Qwen3VisionProcessor.from_pretrained(tmp_path) == processor


def test_placeholder_count_and_frame_indices_are_checked(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    processor = Qwen3VisionProcessor()
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    with pytest.raises(ValueError, match="1 video placeholders but 0 images and 0 videos"):
        build_qwen3_inputs(tokenizer, processor, messages)
    with pytest.raises(ValueError, match="timestamps of shape"):
        processor.process_video(VideoClip.from_indices(_video(4, 64, 64, 0), np.arange(3), 2.0))


# The released processor configs of Qwen/Qwen3-VL-8B-Instruct and Qwen/Qwen3.5-* (identical), verbatim.
RELEASED_IMAGE_CONFIG = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
}
RELEASED_VIDEO_CONFIG = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor", "video_processor_type": "Qwen3VLVideoProcessor",
}


def test_released_processor_configs_bit_exact(tiny_dir, tmp_path):
    """The released configs give framethink's defaults, and transformers and framethink agree under them (a small
    image grows to the 65,536-pixel minimum; a 720p clip of 40 frames at 25 fps keeps its size, rounded to 32)."""
    import json
    import shutil

    released = shutil.copytree(tiny_dir, tmp_path / "released")
    (released / "preprocessor_config.json").write_text(json.dumps(RELEASED_IMAGE_CONFIG))
    (released / "video_preprocessor_config.json").write_text(json.dumps(RELEASED_VIDEO_CONFIG))
    processor = Qwen3VisionProcessor.from_pretrained(released)
    assert processor == Qwen3VisionProcessor()
    tokenizer = AutoTokenizer.from_pretrained(released)
    image, video = _video(1, 90, 120, 7)[0], _video(40, 720, 1280, 8)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, QUESTION]}]
    indices = processor.sample_indices(40, 25.0)  # 1.6 s at 2 fps: int(3.2) = 3 -> the minimum 4
    mine = build_qwen3_inputs(tokenizer, processor, messages, images=[image],
                              videos=[VideoClip.from_indices(video[indices], indices, 25.0)])
    official = AutoProcessor.from_pretrained(released)
    text = official.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = official(text=[text], images=[image], videos=[video], return_tensors="pt",
                        videos_kwargs={"video_metadata": [{"total_num_frames": 40, "fps": 25.0}]})
    _assert_equal(mine, expected)
    assert mine["image_grid_thw"].tolist() == [[1, 14, 20]] and mine["video_grid_thw"].tolist() == [[2, 44, 80]]
