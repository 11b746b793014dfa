"""Policy adapters, one model family per folder, and the registry that maps a checkpoint's model_type to its family
(docs/models.md)."""
from framethink.models.registry import build_tiny, load_adapter

__all__ = ["build_tiny", "load_adapter"]
