"""Typed errors. Every error names where the fault is (file, line/record, field) so nothing is lost."""
from __future__ import annotations

from pathlib import Path


class FramethinkError(Exception):
    """Base class of every error framethink raises on purpose."""


class DataError(FramethinkError):
    """A record that cannot be used: names the file, the line (1-based) or list index, and the field."""

    def __init__(self, file: str | Path, where: str, field: str, reason: str) -> None:
        self.file, self.where, self.field, self.reason = str(file), where, field, reason
        super().__init__(f"{file}:{where}: field '{field}': {reason}")


class VideoDecodeError(FramethinkError):
    """A missing, corrupt, truncated or empty video/image. Nothing is ever substituted for it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class ConfigError(FramethinkError):
    """An unknown key, a wrong type or a bad value in a recipe or an override."""


class CheckpointWriteError(FramethinkError):
    """A checkpoint that could not be written: names its path, the reason and the bytes it needs. The previous
    checkpoint is intact and is the one `--resume` starts from."""

    def __init__(self, path: str | Path, reason: str, needed: int, free: int, previous: str | Path | None) -> None:
        self.path, self.reason, self.needed, self.free = str(path), reason, needed, free
        kept = f"the previous checkpoint {previous} is intact and --resume starts from it" if previous else \
            "no earlier checkpoint exists"
        super().__init__(f"cannot write checkpoint {path}: {reason}; it needs about {needed:,} bytes and "
                         f"{free:,} bytes are free there; {kept}")


class TrainingStopped(FramethinkError):
    """A run that stopped before its last step on purpose (a signal, repeated non-finite updates, a record that
    failed): says why, where the checkpoint is and how to resume."""
