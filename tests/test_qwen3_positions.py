"""Qwen3-VL / Qwen3.5 M-RoPE positions: framethink's rule against transformers 5.2x's `get_rope_index` and against the
rule the released checkpoints were trained with (transformers 4.57 `Qwen3VLModel.get_rope_index`, transcribed
below), on prompts with timestamped videos, images and left padding. The three agree; the test pins it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from framethink.models.qwen3_vl.inputs import Qwen3VisionProcessor, VideoClip, build_qwen3_inputs
from framethink.models.qwen3_vl.positions import qwen3_position_ids, split_video_grids
from framethink.models.qwen3_vl.tiny import build_tiny_qwen3


@pytest.fixture(scope="module", params=("qwen3-vl", "qwen3.5"))
def tiny(request, tmp_path_factory):
    path = build_tiny_qwen3(request.param, tmp_path_factory.mktemp(request.param.replace(".", "")))
    model = AutoModelForImageTextToText.from_pretrained(path)
    return model, AutoTokenizer.from_pretrained(path), Qwen3VisionProcessor.from_pretrained(path)


def released_rope_index(input_ids, image_grid_thw, video_grid_thw, attention_mask, *, image_id, video_id,
                        vision_start_id, merge_size):
    """transformers 4.57 `Qwen3VLModel.get_rope_index` (the code Qwen3-VL was released with): a vision block starts
    after `<|vision_start|>`; text resumes at the previous positions' maximum + 1; videos are split per temporal
    patch with t = 1."""
    if video_grid_thw is not None:
        video_grid_thw = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
        video_grid_thw[:, 0] = 1
    position_ids = torch.ones(3, *input_ids.shape, dtype=input_ids.dtype)
    image_index, video_index = 0, 0
    for i, ids in enumerate(input_ids):
        ids = ids[attention_mask[i] == 1]
        vision_starts = torch.argwhere(ids == vision_start_id).squeeze(1)
        vision_tokens = ids[vision_starts + 1]
        remain_images, remain_videos = (vision_tokens == image_id).sum(), (vision_tokens == video_id).sum()
        tokens = ids.tolist()
        pieces, st = [], 0
        for _ in range(remain_images + remain_videos):
            ed_image = tokens.index(image_id, st) if image_id in tokens[st:] and remain_images > 0 else len(tokens) + 1
            ed_video = tokens.index(video_id, st) if video_id in tokens[st:] and remain_videos > 0 else len(tokens) + 1
            if ed_image < ed_video:
                t, h, w = image_grid_thw[image_index]
                image_index, remain_images, ed = image_index + 1, remain_images - 1, ed_image
            else:
                t, h, w = video_grid_thw[video_index]
                video_index, remain_videos, ed = video_index + 1, remain_videos - 1, ed_video
            gt, gh, gw = t.item(), h.item() // merge_size, w.item() // merge_size
            text_len = ed - st
            st_idx = pieces[-1].max() + 1 if pieces else 0
            pieces.append(torch.arange(text_len).view(1, -1).expand(3, -1) + st_idx)
            t_index = torch.arange(gt).view(-1, 1).expand(-1, gh * gw).flatten()
            h_index = torch.arange(gh).view(1, -1, 1).expand(gt, -1, gw).flatten()
            w_index = torch.arange(gw).view(1, 1, -1).expand(gt, gh, -1).flatten()
            pieces.append(torch.stack([t_index, h_index, w_index]) + text_len + st_idx)
            st = ed + gt * gh * gw
        if st < len(tokens):
            st_idx = pieces[-1].max() + 1 if pieces else 0
            pieces.append(torch.arange(len(tokens) - st).view(1, -1).expand(3, -1) + st_idx)
        position_ids[:, i, attention_mask[i] == 1] = torch.cat(pieces, dim=1)
    return position_ids


def _video(total: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (total, h, w, 3), dtype=np.uint8)


def _batch(tokenizer, processor) -> dict[str, torch.Tensor]:
    """Two left-padded rows: a 5-frame video (odd) then an image; an image then a 16-frame 96x64 video."""
    rows = []
    for content, images, videos in (
        ([{"type": "video"}, {"type": "image"}, {"type": "text", "text": "first?"}],
         [_video(1, 64, 96, 1)[0]], [VideoClip.from_indices(_video(5, 64, 64, 2), np.array([0, 7, 14, 21, 29]), 10.0)]),
        ([{"type": "image"}, {"type": "video"}, {"type": "text", "text": "What happens at the end of the clip?"}],
         [_video(1, 128, 64, 3)[0]], [VideoClip.from_indices(_video(16, 96, 64, 4), np.arange(16) * 3, 24.0)]),
    ):
        rows.append(build_qwen3_inputs(tokenizer, processor, [{"role": "user", "content": content}],
                                       images=images, videos=videos))
    length = max(row["input_ids"].shape[1] for row in rows)
    batch = {}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        batch[key] = torch.stack([torch.nn.functional.pad(row[key][0], (length - row[key].shape[1], 0)) for row in rows])
    for key in ("image_grid_thw", "video_grid_thw"):
        batch[key] = torch.cat([row[key] for row in rows])
    return batch


def test_positions_equal_transformers_and_the_released_rule(tiny):
    model, tokenizer, processor = tiny
    batch = _batch(tokenizer, processor)
    mine = qwen3_position_ids(batch["mm_token_type_ids"], batch["attention_mask"], batch["image_grid_thw"],
                              batch["video_grid_thw"], merge_size=processor.merge_size)
    current, _ = model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        video_grid_thw=batch["video_grid_thw"].clone(), attention_mask=batch["attention_mask"])
    config = model.config
    released = released_rope_index(
        batch["input_ids"], batch["image_grid_thw"], batch["video_grid_thw"].clone(), batch["attention_mask"],
        image_id=config.image_token_id, video_id=config.video_token_id,
        vision_start_id=config.vision_start_token_id, merge_size=processor.merge_size)
    keep = batch["attention_mask"].bool()
    assert torch.equal(mine[:, keep], current[:, keep])
    assert torch.equal(mine[:, keep], released[:, keep])
    assert (mine[:, ~keep] == 0).all()


def test_timestamp_text_advances_positions_by_hand(tiny):
    """One 2-frame patch pair of 64x64 frames (2x2 merged tokens each): every block has time 0 + start, and the text
    between blocks (vision end, the next timestamp, vision start) advances all three axes."""
    _, tokenizer, processor = tiny
    clip = VideoClip.from_indices(_video(4, 64, 64, 5), np.array([0, 1, 2, 3]), 1.0)  # patches at 0.5 s and 2.5 s
    inputs = build_qwen3_inputs(tokenizer, processor, [{"role": "user", "content": [{"type": "video"}]}],
                                videos=[clip])
    positions = qwen3_position_ids(inputs["mm_token_type_ids"], inputs["attention_mask"],
                                   video_grid_thw=inputs["video_grid_thw"])[:, 0]  # [3, L]
    video = (inputs["mm_token_type_ids"][0] == 2).nonzero().flatten().tolist()
    first, second = video[:4], video[4:]
    start = first[0]
    assert positions[:, first].tolist() == [[start] * 4, [start, start, start + 1, start + 1],
                                            [start, start + 1, start, start + 1]]
    gap = second[0] - first[-1] - 1  # "<|vision_end|><2.5 seconds><|vision_start|>" as text tokens
    assert tokenizer.decode(inputs["input_ids"][0, first[-1] + 1:second[0]]) == "<|vision_end|><2.5 seconds><|vision_start|>"
    assert positions[:, second[0]].tolist() == [start + 2 + gap] * 3
    assert positions[:, second].amax().item() == start + 2 + gap + 1


def test_split_video_grids_and_mismatch_errors():
    assert split_video_grids(torch.tensor([[3, 4, 6], [1, 2, 2]])).tolist() == [[1, 4, 6]] * 3 + [[1, 2, 2]]
    types = torch.tensor([[0, 2, 2, 2, 2, 0]])
    mask = torch.ones_like(types)
    with pytest.raises(ValueError, match="more video tokens than grids"):
        qwen3_position_ids(types, mask, video_grid_thw=None)
    with pytest.raises(ValueError, match="more video frame grids"):
        qwen3_position_ids(types, mask, video_grid_thw=torch.tensor([[2, 4, 4]]))
