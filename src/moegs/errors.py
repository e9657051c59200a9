"""Errors that the command line turns into one clear line and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MoegsError", "DataError", "CheckpointError", "ConfigError", "MissingFramesWarning"]


class MoegsError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class DataError(MoegsError):
    """Malformed or missing scene data. The message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class CheckpointError(MoegsError):
    """A checkpoint that is missing, truncated or of the wrong kind."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


class ConfigError(MoegsError):
    """A bad flag or configuration value."""


class MissingFramesWarning(UserWarning):
    """A scene lists frames whose images are not on disk; the frames present were loaded."""
