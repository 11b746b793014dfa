"""Make the registry's CUDA torchvision importable on CPU torch, in the TEST environment only.

transformers' official Qwen-VL processors (the reference the tests compare against) need torchvision; the
only wheel here is a CUDA build whose C extension cannot load on CPU torch, and `import torchvision` then
fails with "operator torchvision::nms does not exist". Defining the two operator schemas first makes
`torchvision.transforms.v2` work. The Makefile installs this module with a `.pth` line
into the test virtualenv so that subprocesses (torchrun workers, CLI calls) get it too. framethink itself
never imports torchvision, and its own virtualenv does not have it.
"""
import torch

try:
    _LIB = torch.library.Library("torchvision", "DEF")
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
except RuntimeError:  # already defined
    pass
