"""Errors a user can fix, apart from bugs.

A ``UserError`` means the input is wrong, not the code: a config value out of range, a stage's
input that was never made, a corrupt file, a missing game. The CLI prints it as one line and
exits 2; every other exception keeps its traceback (it is a bug to report). The subclasses also
derive from the builtin a caller would expect (``ValueError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says how."""


class ConfigValueError(UserError, ValueError):
    """A config value (or command-line argument) outside what the code accepts."""


class MissingInputError(UserError, FileNotFoundError):
    """An input a stage needs does not exist (the message names the stage that makes it)."""


class CorruptInputError(UserError, ValueError):
    """An input file exists but cannot be read (the message names the file)."""
