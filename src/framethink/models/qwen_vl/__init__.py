"""The Qwen2-VL / Qwen2.5-VL family: inputs (`inputs`), positions (`mrope`), adapter, loader, tiny builder and its
registry entry (`family`). docs/models.md describes it."""
