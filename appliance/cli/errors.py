"""The error every ``jumpgate`` command raises for a user-facing failure.

``cli/main.py`` catches :class:`CliError`, prints ``jumpgate: <message>`` as one line on
stderr and exits with :attr:`CliError.exit_code` (1). Messages never hold secrets.
"""
from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A failure to report to the user as one line, with a non-zero exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        # One line, whatever the cause carried (server text, file names with newlines...).
        return " ".join(self.message.split())
