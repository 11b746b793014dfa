"""Tiny randomly initialised checkpoints of every registered family, built offline
(`framethink model tiny --arch ARCH`): `build_tiny` and `tiny_archs` from the family registry."""
from framethink.models.registry import build_tiny, tiny_archs

__all__ = ["build_tiny", "tiny_archs"]
