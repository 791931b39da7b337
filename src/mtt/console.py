"""What mtt prints: its logger's messages on the console, for the command line and for
Python callers of :func:`mtt.train` and :func:`mtt.export` who have not set up logging."""

import functools
import logging
import os
import sys

LOGGER = logging.getLogger("mtt")


def counted(count: int, noun: str) -> str:
    """``"1 structure"``, ``"3 structures"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (it may be swapped, e.g. by pytest)."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.setLevel(logging.INFO)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass

    def handleError(self, record):
        """A reader that went away (``mtt data pack ... | head``) is not an error of the
        command, which goes on; what it prints goes nowhere from then on (the usual Unix
        behaviour, without logging's traceback for every later line)."""
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):  # no file descriptor (stdout replaced in-process)
                pass
            return
        super().handleError(record)


def attach_console() -> None:
    """The command line: INFO and above on the console, for the whole process."""
    if not any(isinstance(h, ConsoleHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(ConsoleHandler())
    LOGGER.setLevel(logging.DEBUG)  # handlers filter: the console shows INFO and above
    LOGGER.propagate = False


def prints_progress(function):
    """Print ``function``'s progress as the command line does, for the duration of the call,
    unless the caller configured logging (handlers on the root logger or on mtt's own), in
    which case the messages go where the caller said. Without this a Python user saw
    nothing: not the epochs, not even the report ``dry_run`` exists for."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if LOGGER.handlers or logging.getLogger().handlers:
            return function(*args, **kwargs)
        handler, level = ConsoleHandler(), LOGGER.level
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.DEBUG)
        try:
            return function(*args, **kwargs)
        finally:
            LOGGER.removeHandler(handler)
            LOGGER.setLevel(level)

    return wrapper
