"""Train a model from an options file, then export the best one to model.pt.

On several GPUs, launch it with torchrun (torchrun --nproc_per_node=4 -m mtt train
options.yaml) or SLURM's srun: one process per GPU, batch_size counted over all of them.
"""

import argparse

HELP = "train a model from an options.yaml file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..architectures import names

    parser.epilog = f"architectures: {', '.join(names())}"
    parser.add_argument("options", help="the options file (YAML)")
    parser.add_argument(
        "-o", "--output", default="model.pt", help="path of the exported model (default: model.pt)"
    )
    parser.add_argument(
        "--output-dir", default="outputs", help="where run directories are made (default: outputs)"
    )
    parser.add_argument(
        "-r",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an option, e.g. -r architecture.training.num_epochs=10",
    )
    parser.add_argument(
        "--restart",
        metavar="PATH|auto",
        help="continue from a training checkpoint; 'auto' picks the newest "
        "complete one under --output-dir",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="overwrite the output model if it exists"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check options, data, units and elements (and a pretrained model's reference "
        "energies and zero-shot errors when fine-tuning), report, and train nothing",
    )


def run(args: argparse.Namespace) -> None:
    from ..api import train

    train(
        args.options,
        output=args.output,
        output_dir=args.output_dir,
        restart=args.restart,
        overrides=args.override,
        force=args.force,
        dry_run=args.dry_run,
    )
