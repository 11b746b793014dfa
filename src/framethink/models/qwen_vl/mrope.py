"""Qwen-VL 3-D rotary positions (M-RoPE), computed by the rule the released checkpoints were trained with.

Each text token advances all three axes by one. A vision block of grid (t, h, w) (merged: h/m, w/m) takes
positions start + (time, row, column); the text after it resumes at the block's largest position + 1.
Time advances by `second_per_grid * tokens_per_second` per temporal grid on Qwen2.5-VL (truncated to an
integer) and by 1 on Qwen2-VL.

This is the rule of the original Qwen2.5-VL code (transformers 4.49, used to train Video-R1). transformers
5.23 resumes text after a video at start + max(h, w) / m instead, so the text that follows a multi-step
video overlaps its time positions; framethink computes positions itself and passes them to every forward.
"""
from __future__ import annotations

import torch


def vision_block_positions(
    start: int, grid_thw: torch.Tensor, merge_size: int, time_step: float
) -> torch.Tensor:
    """Positions [3, t*h*w/m^2] of one merged vision block beginning at `start`."""
    t, h, w = (int(v) for v in grid_thw)
    h, w = h // merge_size, w // merge_size
    time = (torch.arange(t).view(-1, 1).expand(-1, h * w).float() * time_step).long().flatten()  # [t*h*w]
    rows = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
    cols = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
    return torch.stack([time, rows, cols]) + start


def mrope_position_ids(
    token_types: torch.Tensor,
    attention_mask: torch.Tensor,
    grids: list[list[torch.Tensor]],
    time_steps: list[list[float]],
    *,
    merge_size: int,
) -> torch.Tensor:
    """3-D positions [3, N, L] for N rows.

    token_types [N, L]: 0 text, 1 image, 2 video; attention_mask [N, L] (padding gets position 0);
    grids[i] / time_steps[i]: the (t, h, w) grid and the temporal step of each vision block of row i, in order
    (time step 1.0 for Qwen2-VL videos and for images; second_per_grid * tokens_per_second for Qwen2.5-VL videos).
    """
    n, length = token_types.shape
    positions = torch.zeros(3, n, length, dtype=torch.long)
    for row in range(n):
        keep = attention_mask[row].bool()
        types = token_types[row][keep].tolist()
        blocks = iter(zip(grids[row], time_steps[row]))
        pieces, start, i = [], 0, 0
        while i < len(types):
            j = i
            while j < len(types) and types[j] == types[i]:
                j += 1
            if types[i] == 0:
                pieces.append(torch.arange(start, start + j - i).expand(3, -1))
                start += j - i
                i = j
                continue
            # consecutive vision blocks of one kind are split by their grid sizes
            while i < j:
                grid, step = next(blocks)
                block = vision_block_positions(start, grid, merge_size, step)
                pieces.append(block)
                start = int(block.max()) + 1
                i += block.shape[1]
        positions[:, row, keep] = torch.cat(pieces, dim=1) if pieces else positions[:, row, keep]
    return positions
