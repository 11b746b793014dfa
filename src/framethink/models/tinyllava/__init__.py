"""The TinyLLaVA-Video family: the transformers model (`modeling`), SigLIP frames (`inputs`), the released layout and
conversion (`convert`), adapter and its registry entry (`family`). docs/models.md describes it."""
