"""Pack structure files into a directory that training and evaluation read from disk.

``mtt data pack FILE... -o DIR`` reads the files one structure at a time (any format ASE
reads) and writes flat arrays with every numeric label, and a manifest. Name DIR as
``read_from`` of a data set in options.yaml (or give it to ``mtt eval``): structures are then
read when a batch needs them, so memory does not grow with the data set. ``mtt data info DIR``
prints what a packed directory holds: counts, elements and the label keys to declare as
targets.
"""

import argparse
import logging
import os
import sys

HELP = "pack structure files for training with constant memory, or describe a pack"
LOGGER = logging.getLogger("mtt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["pack", "info"],
        help="pack: write FILE... into the directory -o DIR; info: describe the packed "
        "directory given as PATH",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="pack: structure files read by ASE (extxyz, ASE database, ...), concatenated in "
        "order; info: one packed directory",
    )
    parser.add_argument(
        "-o", "--output", metavar="DIR", help="pack: the directory to write (required)"
    )
    parser.add_argument(
        "--reader",
        default=None,
        help="pack: ASE format name of the files (default: guessed from each file name)",
    )
    parser.add_argument(
        "-f",
        "--force",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="pack: replace DIR if it exists (only a directory written by mtt data pack)",
    )


def run(args: argparse.Namespace) -> None:
    from ..errors import MttError

    if args.action == "info":
        if len(args.paths) != 1 or args.output:
            raise MttError("mtt data info takes one packed directory and no -o")
        return _info(args.paths[0])
    if not args.output:
        raise MttError("mtt data pack needs the output directory: -o DIR")
    _pack(args)


def _pack(args: argparse.Namespace) -> None:
    from ..data.packed import pack

    interactive = sys.stderr.isatty()

    def progress(count: int) -> None:
        if interactive and count % 1000 == 0:
            print(f"\rpacked {count} structures", end="", file=sys.stderr, flush=True)

    manifest = pack(args.paths, args.output, args.overwrite, args.reader, progress)
    if interactive:
        print(file=sys.stderr)
    LOGGER.info(
        "packed %d structures (%d atoms) from %d file(s) into %s",
        manifest["structures"],
        manifest["atoms"],
        len(manifest["sources"]),
        args.output,
    )
    _describe(manifest)


def _info(path: str) -> None:
    from ..data.packed import is_packed, open_arrays
    from ..errors import MttError

    if not os.path.exists(path):
        raise MttError(f"no such directory: {path!r}; give a directory written by 'mtt data pack'")
    if not is_packed(path):
        raise MttError(f"{path!r} is not a directory written by 'mtt data pack'")
    arrays = open_arrays(path)  # checks the manifest against the arrays
    manifest = arrays.manifest
    LOGGER.info(
        "%s: %d structures, %d atoms, packed by %s on %s",
        path,
        manifest["structures"],
        manifest["atoms"],
        manifest.get("written_by", "?"),
        manifest.get("created", "?"),
    )
    for source in manifest["sources"]:
        LOGGER.info("  from %s (%d structures)", source["path"], source["structures"])
    _describe(manifest)


def _describe(manifest: dict) -> None:
    LOGGER.info("elements: %s", manifest["atomic_types"])
    for entry in manifest["labels"]:
        where = "per atom" if entry["per_atom"] else "per structure"
        shape = "x".join(str(n) for n in entry["shape"]) or "scalar"
        LOGGER.info(
            "label %r: %s, %s, in %d structures", entry["key"], where, shape, entry["count"]
        )
    for key, why in manifest.get("dropped_keys", {}).items():
        LOGGER.warning(
            "not packed: %r (%s); a target reading it from this pack will be refused: fix "
            "that structure and pack again",
            key,
            why,
        )
