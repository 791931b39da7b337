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
    parser.add_argument(
        "--second-derivatives",
        action="store_true",
        help="keep the whole autograd graph, so that second derivatives of the energy "
        "(Hessians by autograd) are exact; pet and soap_bpnn otherwise compute forces and "
        "stress with their own gradient code (pet layer by layer in much less memory, "
        "soap_bpnn faster), exact only to first order",
    )


def run(args: argparse.Namespace) -> None:
    import os

    from .. import pretrained
    from ..api import export
    from ..errors import MttError

    if args.checkpoint in pretrained.names() and not os.path.exists(args.checkpoint):
        path = pretrained.export(args.checkpoint, args.output, args.force, args.dtype)
        print(f"exported {args.checkpoint} to {path}")
    elif not os.path.exists(args.checkpoint) and not os.path.splitext(args.checkpoint)[1]:
        # neither a file nor a shipped model's name: name those
        raise MttError(
            f"{args.checkpoint!r} is neither a checkpoint file nor a shipped model; shipped "
            f"models: {', '.join(pretrained.names()) or 'none'}; or give a .ckpt file written "
            "by 'mtt train'"
        )
    else:
        export(  # says where it wrote
            args.checkpoint,
            args.output,
            force=args.force,
            dtype=args.dtype,
            second_derivatives=args.second_derivatives,
        )
