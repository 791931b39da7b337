"""The ``mtt`` command. Each sub-command is a module with ``add_arguments`` and ``run``.

A problem with the user's input (the command line included) prints one line (``mtt: error:
...``) and exits with status 1; during training the full traceback goes to the run's
``train.log``, and ``--debug`` prints it. An unexpected failure (a bug) exits with status 2 and
keeps its traceback in a new ``mtt-error-*.log``. Ctrl-C exits with 130, SIGTERM with 143.
"""

import argparse
import errno
import os
import signal
import sys
import tempfile
import threading
import traceback
from typing import Dict, List, Optional

from ..console import attach_console
from ..errors import MttError
from ..version import __version__
from . import data as data_command
from . import eval as eval_command
from . import export as export_command
from . import plot as plot_command
from . import train as train_command
from . import verify as verify_command

COMMANDS = {
    "train": train_command,
    "export": export_command,
    "eval": eval_command,
    "plot": plot_command,
    "verify": verify_command,
    "data": data_command,
}


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with 1 on a mistake in the command line (argparse's 2 is mtt's
    status for a bug)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


SUBPARSERS: Dict[str, argparse.ArgumentParser] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtt", description="Train, export and evaluate machine-learning models of atoms."
    )
    parser.add_argument("--version", action="version", version=f"mtt {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print full tracebacks instead of one-line errors"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.__doc__)
        SUBPARSERS[name] = sub
        # (SUPPRESS: absent after the command, 'mtt --debug train' keeps the top level's)
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        module.add_arguments(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C (partial files removed, where to continue reported)."""


def _interrupt(signum, frame) -> None:
    raise _Terminated


# errors of the user's files or file system (full, read-only, not allowed, a name too long),
# not bugs: one line naming the file
USER_OS_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.EPIPE,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, with its usage (not mtt's)
        SUBPARSERS[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    attach_console()
    # a scheduler's SIGTERM (SLURM's time limit, a killed job) ends a run as Ctrl-C does:
    # partial files removed, and where to continue from reported
    previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        COMMANDS[args.command].run(args)
    except MttError as error:
        return _fail(args, error, 1, "error")
    except KeyboardInterrupt as interruption:
        print("mtt: interrupted", file=sys.stderr)
        return 143 if isinstance(interruption, _Terminated) else 130
    except OSError as error:
        if error.errno not in USER_OS_ERRORS:
            return _fail(args, error, 2, "internal error")
        where = f"{error.filename!r}: " if error.filename else ""
        return _fail(args, MttError(f"{where}{error.strerror or error}"), 1, "error")
    except Exception as error:  # a bug: still one line, with the traceback kept
        return _fail(args, error, 2, "internal error")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _fail(args, error: BaseException, status: int, kind: str) -> int:
    if args.debug:
        traceback.print_exc()
    lines = str(error).splitlines() or [type(error).__name__]
    if kind == "internal error":
        lines = [f"{type(error).__name__}: {lines[0]}"]
    for line in lines:
        print(f"mtt: {kind}: {line}", file=sys.stderr)
    log_file = getattr(error, "log_file", None)
    if log_file:
        print(f"mtt: the full traceback is in {log_file}", file=sys.stderr)
    elif kind == "internal error" and not args.debug:
        try:  # a new file: an earlier report is kept
            handle, path = tempfile.mkstemp(prefix="mtt-error-", suffix=".log", dir=".")
            with os.fdopen(handle, "w") as file:
                traceback.print_exc(file=file)
            print(
                f"mtt: please report this bug with {os.path.basename(path)} (or rerun with "
                "--debug)",
                file=sys.stderr,
            )
        except OSError:
            pass
    return status


if __name__ == "__main__":
    sys.exit(main())
