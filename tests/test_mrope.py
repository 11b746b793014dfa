"""M-RoPE positions by the original Qwen2.5-VL rule, against hand-computed values and transformers' rule."""
from __future__ import annotations

import pytest
import torch

from framethink.models.qwen_vl.mrope import mrope_position_ids

TEXT, IMAGE, VIDEO = 0, 1, 2


def _types(*runs: tuple[int, int]) -> torch.Tensor:
    """[1, L] token types from (type, count) runs."""
    return torch.tensor([[kind for kind, count in runs for _ in range(count)]])


def _text(start: int, count: int) -> list[list[int]]:
    return [list(range(start, start + count))] * 3


def _cat(*pieces: list[list[int]]) -> torch.Tensor:
    return torch.tensor([sum((piece[axis] for piece in pieces), []) for axis in range(3)])


def test_text_only_counts_up_on_every_axis():
    types = _types((TEXT, 5))
    positions = mrope_position_ids(types, torch.ones_like(types), [[]], [[]], merge_size=2)
    assert positions.shape == (3, 1, 5)
    assert torch.equal(positions[:, 0], _cat(_text(0, 5)))


def test_image_block_then_text_resumes_after_the_largest_position():
    # grid (1, 4, 6), merge 2 -> 2 rows x 3 columns of merged tokens, starting at position 2
    types = _types((TEXT, 2), (IMAGE, 6), (TEXT, 2))
    positions = mrope_position_ids(types, torch.ones_like(types), [[torch.tensor([1, 4, 6])]], [[1.0]], merge_size=2)
    image = [[2, 2, 2, 2, 2, 2], [2, 2, 2, 3, 3, 3], [2, 3, 4, 2, 3, 4]]
    assert torch.equal(positions[:, 0], _cat(_text(0, 2), image, _text(5, 2)))  # max(2, 3, 4) + 1 = 5


@pytest.mark.parametrize(
    ("time_step", "times", "resume"),
    [
        (2.0, [0, 2, 4, 6], 8),  # Qwen2.5-VL: second_per_grid 1.0 * tokens_per_second 2
        (1.0, [0, 1, 2, 3], 5),  # Qwen2-VL: one position per temporal grid
        (0.5, [0, 0, 1, 1], 3),  # fractional steps are truncated, as the reference does; height/width set the max
    ],
    ids=["qwen2.5-vl-step-2", "qwen2-vl-step-1", "fractional-step"],
)
def test_video_time_steps_and_text_after_the_video(time_step, times, resume):
    # grid (4, 4, 4): 4 temporal grids of 2x2 merged tokens = 16 tokens starting at position 1
    types = _types((TEXT, 1), (VIDEO, 16), (TEXT, 2))
    positions = mrope_position_ids(types, torch.ones_like(types), [[torch.tensor([4, 4, 4])]], [[time_step]],
                                   merge_size=2)
    video = [[1 + t for t in times for _ in range(4)], [1, 1, 2, 2] * 4, [1, 2, 1, 2] * 4]
    assert torch.equal(positions[:, 0], _cat(_text(0, 1), video, _text(resume, 2)))


def test_left_padding_gets_zero_and_positions_start_at_the_first_real_token():
    types = _types((TEXT, 3), (IMAGE, 4), (TEXT, 1))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    positions = mrope_position_ids(types, mask, [[torch.tensor([1, 4, 4])]], [[1.0]], merge_size=2)
    image = [[1, 1, 1, 1], [1, 1, 2, 2], [1, 2, 1, 2]]
    assert torch.equal(positions[:, 0], _cat([[0, 0]] * 3, _text(0, 1), image, _text(3, 1)))


def test_rows_with_different_media():
    # row 0: left-padded image prompt; row 1: a video prompt (2 grids, step 2); completion columns are text
    types = torch.tensor([[TEXT, TEXT, IMAGE, IMAGE, IMAGE, IMAGE, TEXT, TEXT, TEXT],
                          [TEXT, VIDEO, VIDEO, VIDEO, VIDEO, VIDEO, VIDEO, VIDEO, VIDEO]])
    types = torch.cat([types, torch.zeros(2, 2, dtype=torch.long)], dim=1)  # 2 completion tokens
    mask = torch.ones_like(types)
    mask[0, 0] = 0
    grids = [[torch.tensor([1, 4, 4])], [torch.tensor([2, 4, 4])]]
    positions = mrope_position_ids(types, mask, grids, [[1.0], [2.0]], merge_size=2)
    image = [[1, 1, 1, 1], [1, 1, 2, 2], [1, 2, 1, 2]]
    video = [[1, 1, 1, 1, 3, 3, 3, 3], [1, 1, 2, 2] * 2, [1, 2, 1, 2] * 2]
    assert torch.equal(positions[:, 0], _cat([[0]] * 3, _text(0, 1), image, _text(3, 5)))
    assert torch.equal(positions[:, 1], _cat(_text(0, 1), video, _text(4, 2)))


def _transformers_rope_index(model, types, grids, kind, seconds=None):
    key = "image_grid_thw" if kind == IMAGE else "video_grid_thw"
    extra = {} if seconds is None else {"second_per_grid_ts": torch.tensor([seconds])}
    positions, _ = model.model.get_rope_index(torch.zeros_like(types), types, attention_mask=torch.ones_like(types),
                                              **{key: grids}, **extra)
    return positions


def test_agrees_with_transformers_for_images_and_documents_the_video_difference(tiny_qwen25_vl):
    model = tiny_qwen25_vl[0]
    assert model.config.vision_config.tokens_per_second == 2

    types = _types((TEXT, 3), (IMAGE, 6), (TEXT, 4))
    grids = torch.tensor([[1, 4, 6]])
    ours = mrope_position_ids(types, torch.ones_like(types), [list(grids)], [[1.0]], merge_size=2)
    assert torch.equal(ours, _transformers_rope_index(model, types, grids, IMAGE))

    # second_per_grid 1.0 -> time step 2; 4 temporal grids of 2x2 tokens starting at position 3
    types = _types((TEXT, 3), (VIDEO, 16), (TEXT, 4))
    grids = torch.tensor([[4, 4, 4]])
    ours = mrope_position_ids(types, torch.ones_like(types), [list(grids)], [[2.0]], merge_size=2)
    theirs = _transformers_rope_index(model, types, grids, VIDEO, seconds=1.0)
    assert torch.equal(ours[:, :, :19], theirs[:, :, :19])  # the same text before and the same video block
    assert ours[:, 0, 19].tolist() == [10] * 3  # the original rule: the block's max (3 + 6) + 1
    # transformers 5.23 resumes at start + max(h, w) / merge = 3 + 2, inside the video's time span
    assert theirs[:, 0, 19].tolist() == [5] * 3
