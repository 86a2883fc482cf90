"""Errors meant for the person at the terminal: one line that says what is wrong and what to do."""

from __future__ import annotations


class LoraopsError(Exception):
    """A failure the user can act on. The CLI prints ``str(err)`` as a single line, no traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(LoraopsError):
    """params.yaml (or another config file) is malformed or has an invalid value."""


class DataError(LoraopsError):
    """Training or evaluation data is missing or invalid."""


class StackError(LoraopsError):
    """A service of the local stack could not be started, reached or stopped."""


class StageError(LoraopsError):
    """A pipeline stage (training, evaluation, registration, serving) failed."""
