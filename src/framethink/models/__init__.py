"""Policy adapters and the loaders and builders of the models framethink trains."""
from framethink.models.registry import load_adapter

__all__ = ["load_adapter"]
