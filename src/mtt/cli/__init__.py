"""The ``mtt`` command. Each sub-command is a module with ``add_arguments`` and ``run``.

A problem with the user's input prints one line (``mtt: error: ...``) and exits with status 1;
during training the full traceback goes to the run's ``train.log``, and ``--debug`` prints it.
An unexpected failure (a bug) exits with status 2 and keeps its traceback in ``mtt-error.log``.
"""

import argparse
import signal
import sys
import threading
import traceback
from typing import List, Optional

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtt", description="Train, export and evaluate machine-learning models of atoms."
    )
    parser.add_argument("--version", action="version", version=f"mtt {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="print full tracebacks instead of one-line errors"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.__doc__)
        # (SUPPRESS: absent after the command, 'mtt --debug train' keeps the top level's)
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        module.add_arguments(sub)
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
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
    except KeyboardInterrupt:
        print("mtt: interrupted", file=sys.stderr)
        return 130
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
        try:
            with open("mtt-error.log", "w") as file:
                traceback.print_exc(file=file)
            print(
                "mtt: please report this bug with mtt-error.log (or rerun with --debug)",
                file=sys.stderr,
            )
        except OSError:
            pass
    return status


if __name__ == "__main__":
    sys.exit(main())
