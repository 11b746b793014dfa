"""Test set-up.

The official Qwen-VL processors need torchvision, whose only wheel here is a CUDA build whose C
extension cannot load on CPU torch. Defining its two operator schemas before the first import makes
`torchvision.transforms.v2` importable (ENVIRONMENT.md). This is a test-environment workaround for the
reference comparison only; framethink itself never imports torchvision.
"""
from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _register_torchvision_schemas() -> None:
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_TV_LIB"] = lib  # keep the library object alive
    except RuntimeError:
        pass  # already defined (a real CPU torchvision, or a second import)


_register_torchvision_schemas()
