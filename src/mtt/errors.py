"""Errors meant for users.

Every problem caused by a user's input (options, data files, checkpoints, models) is raised as an
:class:`MttError`. The command line prints its message as one line and exits non-zero; the full
traceback goes to the run directory's log file (or the terminal with ``--debug``).
"""


class MttError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class OptionsError(MttError):
    """One or more problems in the options; each message names its dotted key path."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
