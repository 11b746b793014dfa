"""Qwen3-VL / Qwen3.5 3-D rotary positions (interleaved M-RoPE).

A video is one vision block per temporal patch: each has grid (1, h, w), is preceded by its timestamp text
(`<t seconds>` and `<|vision_start|>`, ordinary text tokens) and followed by `<|vision_end|>`. So every block takes
positions start + (0, row, column), and the text after it resumes at the block's largest position + 1; the
timestamp text between two frames advances all three axes like any text. Time order is carried by the text and by
the positions this text advances, not by the time axis of the blocks (always 0 within a block).

The rule of the released checkpoints (transformers 4.57 `Qwen3VLModel.get_rope_index`, the code Qwen3-VL was
released with: `video_grid_thw` repeated per temporal patch with t = 1, text resuming at the previous block's maximum
+ 1) and transformers 5.2x's (`Qwen3VLModel.get_rope_index` / `Qwen3_5Model.get_rope_index`: text resuming at
start + max(h, w) / merge) give the same positions here: for a block with t = 1 its largest position is exactly
start + max(h, w) / merge - 1. The Qwen2.5-VL difference (`framethink.models.qwen_vl.mrope`) needs t > 1 and cannot
occur. tests/test_qwen3_positions.py compares all three (docs/inputs.md, positions).
"""
from __future__ import annotations

from itertools import groupby

import torch

from framethink.models.qwen_vl.mrope import mrope_position_ids


def split_video_grids(video_grid_thw: torch.Tensor) -> torch.Tensor:
    """Video grids [n, 3] -> one grid (1, h, w) per temporal patch [sum t, 3], in order."""
    frames = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
    frames[:, 0] = 1
    return frames


def qwen3_position_ids(
    mm_token_type_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    *,
    merge_size: int = 2,
) -> torch.Tensor:
    """3-D positions [3, N, L] of N rows, by the rule above.

    mm_token_type_ids [N, L]: 0 text, 1 image, 2 video; attention_mask [N, L] (padding gets position 0);
    image_grid_thw [n_images, 3] and video_grid_thw [n_videos, 3]: the grids of the batch's media in sequence
    order, row after row (as the processor returns them and transformers' `get_rope_index` takes them).
    Raises ValueError when the token types do not match the grids.
    """
    grids_by_type = {1: iter(image_grid_thw if image_grid_thw is not None else ()),
                     2: iter(split_video_grids(video_grid_thw) if video_grid_thw is not None else ())}
    unit = merge_size**2
    row_grids: list[list[torch.Tensor]] = []
    for row in range(mm_token_type_ids.shape[0]):
        types = mm_token_type_ids[row][attention_mask[row].bool()].tolist()
        grids: list[torch.Tensor] = []
        for kind, run in groupby(types):
            if kind == 0:
                continue
            tokens = len(list(run))
            while tokens > 0:  # a run may hold several blocks of one kind
                grid = next(grids_by_type[kind], None)
                if grid is None:
                    raise ValueError(f"row {row}: more {'image' if kind == 1 else 'video'} tokens than grids")
                grids.append(grid)
                tokens -= int(grid.prod()) // unit
            if tokens < 0:
                raise ValueError(f"row {row}: a run of vision tokens ends inside a block of its grids")
        row_grids.append(grids)
    for kind, rest in grids_by_type.items():
        if next(rest, None) is not None:
            raise ValueError(f"more {'image' if kind == 1 else 'video frame'} grids than vision tokens")
    steps = [[1.0] * len(grids) for grids in row_grids]
    return mrope_position_ids(mm_token_type_ids, attention_mask, row_grids, steps, merge_size=merge_size)
