"""Errors meant for users.

Every problem caused by a user's input (options, data files, checkpoints, models) is raised as an
:class:`MttError`. The command line prints its message as one line and exits non-zero; the full
traceback goes to the run directory's log file (or the terminal with ``--debug``).
"""

import difflib
from typing import Iterable


class MttError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class OptionsError(MttError):
    """One or more problems in the options; each message names its dotted key path."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``choices`` to a mistyped ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]!r}? " if close else ""
