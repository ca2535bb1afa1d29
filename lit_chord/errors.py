"""Errors a user causes, as opposed to bugs.

A user error (bad data, a bad config value, a path that does not exist) is an exception of ours, so that the
command line (``cli.py``) can print it as one line with exit code 2 and no traceback: the traceback of a mistake
in a YAML file points into code the user did not write and buries the one useful line at its end. Anything else
is a bug and keeps its traceback. ``LIT_CHORD_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message names the file, field or path and what is wrong.

    Args:
        message: One line: where (``file:line``, ``model.objective.mu_peak``, a path) and what is wrong.
        hint: What to do about it, if there is something to say; the command line prints it on a second line.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(UserError, ValueError):
    """A config value that cannot work: out of range, a missing path, hardware this machine does not have.

    A ``ValueError`` too, so that code catching the ``ValueError`` of an ``__init__`` check still catches it.
    """
