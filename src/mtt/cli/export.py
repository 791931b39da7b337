"""Export the best model of a training checkpoint as a metatomic model (.pt)."""

import argparse

HELP = "export a checkpoint (.ckpt) to a metatomic model (.pt)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="a checkpoint written by mtt train (.ckpt), or the name of a pretrained model "
        "(sevennet-0, see mtt.pretrained) to export as shipped",
    )
    parser.add_argument(
        "-o", "--output", default="model.pt", help="path of the exported model (default: model.pt)"
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="overwrite the output model if it exists"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        help="precision of the exported model (default: the one it was trained in)",
    )


def run(args: argparse.Namespace) -> None:
    import os

    from .. import pretrained
    from ..api import export

    if args.checkpoint in pretrained.names() and not os.path.exists(args.checkpoint):
        path = pretrained.export(args.checkpoint, args.output, args.force, args.dtype)
    else:
        path = export(args.checkpoint, args.output, force=args.force, dtype=args.dtype)
    print(f"exported {args.checkpoint} to {path}")
