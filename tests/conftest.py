"""Test set-up: offline everywhere; shared fixtures.

The test virtualenv (`make test`) has torchvision for the official-processor comparisons, made importable by
tests/support/torchvision_cpu_shim.py through a `.pth` line (see the Makefile).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures_models"]
