"""Redraw a run's pictures: learning_curves.png from train.csv (at any time, also while the
run trains or after it was interrupted) and parity.png from predictions.npz (written at the end
of training)."""

import argparse
import logging
import os

HELP = "draw the learning curves (and parity plot) of a run directory"
LOGGER = logging.getLogger("mtt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory of 'mtt train' (outputs/<date>_<time>)")


def run(args: argparse.Namespace) -> None:
    from ..errors import MttError
    from ..plots import redraw

    if os.path.exists(args.run_dir) and not os.path.isdir(args.run_dir):
        raise MttError(
            f"{args.run_dir!r} is a file; give a run directory of 'mtt train' "
            "(outputs/<date>_<time>)"
        )
    if not os.path.isdir(args.run_dir):
        raise MttError(f"run directory not found: {args.run_dir!r}")
    if not os.path.isfile(os.path.join(args.run_dir, "train.csv")):
        raise MttError(
            f"{args.run_dir!r} has no train.csv; give a run directory of 'mtt train' "
            "(outputs/<date>_<time>) after its first epoch"
        )
    for path in redraw(args.run_dir):
        LOGGER.info("wrote %s", path)
