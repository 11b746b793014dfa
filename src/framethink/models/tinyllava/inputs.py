"""SigLIP frame preprocessing in plain torch, without torchvision (docs/models.md).

TinyLLaVA-Video gives every sampled frame to SigLIP as a square image: resized to `size` x `size`
(bicubic, no padding, aspect ratio not kept), rescaled by 1/255 and normalised with mean 0.5 and
std 0.5, which is what transformers' `SiglipImageProcessor` does with the settings of
`google/siglip-so400m-patch14-384` (size 384x384, resample bicubic).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIGLIP_MEAN = 0.5
SIGLIP_STD = 0.5
SIGLIP_RESCALE = 1 / 255


def preprocess_siglip_frames(frames: np.ndarray, *, size: int = 384) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] -> SigLIP pixel values [T, 3, size, size] float32 (docs/models.md).

    `size` is the vision tower's `image_size` (384 for SigLIP-so400m). The uint8 tensor is resized
    directly with `F.interpolate(mode="bicubic", antialias=True)`, as transformers' processor does on
    CPU (a float detour differs by a few grey levels); rescale and normalise are fused into
    `(x - 127.5) / 127.5` with the same float32 constants as transformers, so the result is bit-exact
    with `SiglipImageProcessor`. Raises ValueError for anything but non-empty uint8 [T, H, W, 3].
    """
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"SigLIP frames: expected uint8 RGB frames [T, H, W, 3], got {dtype} {shape}")
    if frames.shape[0] == 0:
        raise ValueError("SigLIP frames: no frames")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.contiguous(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = SIGLIP_MEAN / SIGLIP_RESCALE  # 127.5
    std = SIGLIP_STD / SIGLIP_RESCALE  # 127.5
    return x.to(torch.float32).sub_(mean).div_(std)  # [T, 3, size, size]
