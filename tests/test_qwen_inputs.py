"""Qwen-VL inputs without torchvision: bit-exact against transformers' official processors, and
the inputs reach the model (video pixels, 3-D M-RoPE positions, second_per_grid_ts)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from framethink.errors import ConfigError
from framethink.models.qwen_vl.inputs import QwenVisionProcessor, build_qwen_inputs
from framethink.models.qwen_vl.tiny import TINY_IMAGE_PIXELS, TINY_VIDEO_PIXELS

# Video-R1 training budgets (recipes/video-r1.yaml): image 4..256 * 28*28, video max 128 * 28*28.
VIDEO_R1_TRAIN = dict(image_min_pixels=4 * 28 * 28, image_max_pixels=256 * 28 * 28, video_max_pixels=128 * 28 * 28)


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _official(checkpoint, overrides: dict) -> tuple[Qwen2VLImageProcessor, Qwen2VLVideoProcessor]:
    """transformers' processors loaded from the same checkpoint, with the same pixel overrides."""
    image = {k.removeprefix("image_"): v for k, v in overrides.items() if k.startswith("image_")}
    video = {k.removeprefix("video_"): v for k, v in overrides.items() if k.startswith("video_")}
    return (
        Qwen2VLImageProcessor.from_pretrained(checkpoint, **image),
        Qwen2VLVideoProcessor.from_pretrained(checkpoint, **video),
    )


def _metadata(frames: np.ndarray, fps: float) -> dict:
    # every frame passes through unchanged; the official processor derives sampled_fps = fps from this
    return {"total_num_frames": len(frames), "fps": fps, "frames_indices": list(range(len(frames)))}


@pytest.mark.parametrize(
    ("checkpoint", "overrides"),
    [("tiny_qwen2_vl_dir", {}), ("tiny_qwen25_vl_dir", VIDEO_R1_TRAIN)],
    ids=["qwen2-vl-checkpoint", "qwen2.5-vl-video-r1-train"],
)
def test_pixels_bit_exact_against_official(request, checkpoint, overrides):
    checkpoint = request.getfixturevalue(checkpoint)
    mine = QwenVisionProcessor.from_pretrained(checkpoint, **overrides)
    official_image, official_video = _official(checkpoint, overrides)
    # 50x70 needs resizing; 20x30 hits the min-pixels branch; 600x500 the max-pixels branch for Video-R1 images
    images = [_frames(1, 50, 70, 1)[0], _frames(1, 20, 30, 2)[0], _frames(1, 600, 500, 3)[0], _frames(1, 56, 56, 4)[0]]
    pixel_values, grid = mine.process_images(images)
    expected = official_image(images=images, return_tensors="pt")
    assert torch.equal(pixel_values, expected["pixel_values"])
    assert torch.equal(grid, expected["image_grid_thw"])
    assert pixel_values.shape[1] == 3 * 2 * 14 * 14

    for frames in (_frames(5, 50, 70, 5), _frames(4, 56, 56, 6)):  # odd T is padded with the last frame
        pixel_values, grid, seconds = mine.process_video(frames, fps=3.0)
        expected = official_video(
            videos=[frames],
            video_metadata=[_metadata(frames, 3.0)],
            do_sample_frames=False,
            cap_pixels_per_frame=False,
            return_tensors="pt",
        )
        assert torch.equal(pixel_values, expected["pixel_values_videos"])
        assert torch.equal(grid, expected["video_grid_thw"])
        assert grid[0, 0].item() == (len(frames) + 1) // 2
        assert seconds == 2 / 3.0


def test_odd_frame_count_repeats_last_frame():
    processor = QwenVisionProcessor(video_min_pixels=56 * 56, video_max_pixels=56 * 56)
    frames = _frames(3, 56, 56)
    padded = np.concatenate([frames, frames[-1:]])
    assert torch.equal(processor.process_video(frames, 2.0)[0], processor.process_video(padded, 2.0)[0])


def test_from_pretrained_reads_each_config_layout(tmp_path, tiny_qwen25_vl_dir, offline_tokenizer):
    # legacy Qwen layout (top-level min/max pixels) for images, `size` for the video file
    tiny = QwenVisionProcessor.from_pretrained(tiny_qwen25_vl_dir)
    assert (tiny.image_min_pixels, tiny.image_max_pixels) == TINY_IMAGE_PIXELS
    assert (tiny.video_min_pixels, tiny.video_max_pixels) == TINY_VIDEO_PIXELS
    assert tiny.absolute_time

    # transformers 5 saves both sub-processors nested in processor_config.json
    official = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=1000, max_pixels=9000),
        video_processor=Qwen2VLVideoProcessor(min_pixels=2000, max_pixels=8000),
        tokenizer=offline_tokenizer,
    )
    official.save_pretrained(tmp_path)
    assert "video_processor" in json.loads((tmp_path / "processor_config.json").read_text())
    nested = QwenVisionProcessor.from_pretrained(tmp_path, video_max_pixels=128 * 28 * 28)
    assert (nested.image_min_pixels, nested.image_max_pixels) == (1000, 9000)
    assert (nested.video_min_pixels, nested.video_max_pixels) == (2000, 128 * 28 * 28)

    with pytest.raises(ConfigError, match="max_pixel"):
        QwenVisionProcessor.from_pretrained(tiny_qwen25_vl_dir, max_pixel=1)
    with pytest.raises(ConfigError, match="does not exist"):
        QwenVisionProcessor.from_pretrained(tmp_path / "missing")
    (tmp_path / "processor_config.json").unlink()
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        QwenVisionProcessor.from_pretrained(tmp_path)


def test_bad_frames_raise():
    processor = QwenVisionProcessor()
    with pytest.raises(ValueError, match="uint8"):
        processor.process_video(_frames(2, 56, 56).astype(np.float32), 2.0)
    with pytest.raises(ValueError, match="images\\[0\\]"):
        processor.process_images([_frames(2, 56, 56)])
    with pytest.raises(ValueError, match="fps"):
        processor.process_video(_frames(2, 56, 56), 0.0)


QUESTION = {"type": "text", "text": "Which colour comes first?\nOptions:\nA. red\nB. blue\n"}
CASES = {
    "image": ([{"type": "image"}, QUESTION], [_frames(1, 50, 70)[0]], []),
    "video": ([{"type": "video"}, QUESTION], [], [(_frames(5, 50, 70), 2.5)]),
    "text": ([QUESTION], [], []),
    "image+video": (
        [{"type": "video"}, {"type": "image"}, QUESTION],
        [_frames(1, 60, 40)[0]],
        [(_frames(4, 56, 56), 1.0)],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_build_qwen_inputs_matches_official_processor(case, offline_tokenizer, tiny_qwen25_vl_dir):
    content, images, videos = CASES[case]
    messages = [{"role": "user", "content": content}]
    processor = QwenVisionProcessor.from_pretrained(tiny_qwen25_vl_dir, **VIDEO_R1_TRAIN)
    mine = build_qwen_inputs(offline_tokenizer, processor, messages, images=images, videos=videos)

    official_image, official_video = _official(tiny_qwen25_vl_dir, VIDEO_R1_TRAIN)
    official = Qwen2_5_VLProcessor(
        image_processor=official_image,
        tokenizer=offline_tokenizer,
        video_processor=official_video,
        chat_template=offline_tokenizer.chat_template,
    )
    text = official.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    media = {}
    if images:
        media["images"] = images
    if videos:
        media.update(
            videos=[frames for frames, _ in videos],
            video_metadata=[_metadata(frames, fps) for frames, fps in videos],
            do_sample_frames=False,
            cap_pixels_per_frame=False,
        )
    expected = official(text=[text], return_tensors="pt", **media)

    assert set(mine) == set(expected)
    for key, value in expected.items():
        assert mine[key].dtype == value.dtype, key
        assert torch.equal(mine[key], value), key
    n_video_tokens = sum(int(g.prod()) // 4 for g in mine.get("video_grid_thw", []))
    assert int((mine["mm_token_type_ids"] == 2).sum()) == n_video_tokens
    if case == "video":
        assert torch.equal(mine["second_per_grid_ts"], torch.tensor([2 / 2.5]))  # temporal_patch_size / fps


def test_build_qwen_inputs_checks_placeholder_count(offline_tokenizer):
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    with pytest.raises(ValueError, match="1 video placeholders but 0 images and 0 videos"):
        build_qwen_inputs(offline_tokenizer, QwenVisionProcessor(), messages)


def test_qwen2_vl_inputs_have_no_seconds(tiny_qwen2_vl_dir, offline_tokenizer):
    processor = QwenVisionProcessor.from_pretrained(tiny_qwen2_vl_dir)
    assert not processor.absolute_time  # Qwen2-VL's generate() rejects second_per_grid_ts
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    inputs = build_qwen_inputs(offline_tokenizer, processor, messages, videos=[(_frames(4, 56, 56), 2.0)])
    assert "second_per_grid_ts" not in inputs and "video_grid_thw" in inputs


def _video_inputs(model_parts, frames: np.ndarray, fps: float) -> dict[str, torch.Tensor]:
    _, tokenizer, processor = model_parts
    messages = [{"role": "user", "content": [{"type": "video"}, QUESTION]}]
    return build_qwen_inputs(tokenizer, processor, messages, videos=[(frames, fps)])


@torch.no_grad()
def test_video_pixels_reach_the_forward(tiny_qwen25_vl):
    model = tiny_qwen25_vl[0]
    frames = _frames(8, 56, 56)
    inputs = _video_inputs(tiny_qwen25_vl, frames, 2.0)
    logits = model(**inputs).logits
    assert torch.equal(model(**inputs).logits, logits)  # deterministic
    other = _video_inputs(tiny_qwen25_vl, 255 - frames, 2.0)
    assert torch.equal(other["input_ids"], inputs["input_ids"])
    assert not torch.allclose(model(**other).logits[0, -1], logits[0, -1])


@torch.no_grad()
def test_forward_uses_3d_mrope_positions(tiny_qwen25_vl):
    model = tiny_qwen25_vl[0]
    inputs = _video_inputs(tiny_qwen25_vl, _frames(8, 56, 56), 2.0)  # grid [4, 4, 4] -> 4 x 2 x 2 merged tokens
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
        attention_mask=inputs["attention_mask"],
    )  # [3, 1, L]
    video = (inputs["mm_token_type_ids"][0] == 2).nonzero().flatten()
    start = int(video[0])
    assert len(video) == 16 and torch.equal(video, torch.arange(start, start + 16))
    assert torch.equal(positions[:, 0, :start], torch.arange(start).expand(3, -1))  # text before: 1-D
    # time: tokens_per_second (2) * second_per_grid_ts (2 frames / 2 fps = 1 s) = 2 per tubelet
    time = torch.tensor([0, 2, 4, 6]).repeat_interleave(4)
    height = torch.tensor([0, 0, 1, 1]).repeat(4)
    width = torch.tensor([0, 1, 0, 1]).repeat(4)
    assert torch.equal(positions[:, 0, video], torch.stack([time, height, width]) + start)

    logits = model(**inputs).logits
    explicit = model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}, position_ids=positions).logits
    assert torch.allclose(logits, explicit, atol=1e-6)
    # without mm_token_type_ids transformers v5 silently falls back to 1-D positions
    one_d = model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    assert not torch.allclose(one_d[0, -1], logits[0, -1], atol=1e-4)


@torch.no_grad()
def test_second_per_grid_ts_changes_temporal_positions(tiny_qwen25_vl):
    model = tiny_qwen25_vl[0]
    frames = _frames(8, 56, 56)
    at_2fps = _video_inputs(tiny_qwen25_vl, frames, 2.0)
    at_1fps = _video_inputs(tiny_qwen25_vl, frames, 1.0)
    assert at_1fps["second_per_grid_ts"].tolist() == [2.0]
    assert torch.equal(at_1fps["input_ids"], at_2fps["input_ids"])

    def time_positions(inputs):
        positions, _ = model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs["second_per_grid_ts"],
        )
        video = inputs["mm_token_type_ids"][0] == 2
        return positions[0, 0, video][::4] - positions[0, 0, video][0]  # one per tubelet

    assert time_positions(at_2fps).tolist() == [0, 2, 4, 6]
    assert time_positions(at_1fps).tolist() == [0, 4, 8, 12]
    assert not torch.allclose(model(**at_1fps).logits[0, -1], model(**at_2fps).logits[0, -1], atol=1e-4)
