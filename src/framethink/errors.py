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
