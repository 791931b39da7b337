"""Check an exported model: recompute the reference structures stored in it at export."""

import argparse

HELP = "check that an exported model (.pt) still gives the results stored in it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported model (.pt) written by mtt")


def run(args: argparse.Namespace) -> None:
    from ..errors import MttError
    from ..evaluate import load_model
    from ..verification import METADATA_KEY, read_stored, verify

    # a model that needs extensions is another tool's: it stores nothing to verify
    not_ours = (
        "such a model was not exported by mtt (mtt's models need none), so it holds no "
        "reference results to verify; evaluate it with 'mtt eval -e <directory>' instead"
    )
    model = load_model(args.model, extensions_fix=not_ours)
    stored = model.metadata().extra.get(METADATA_KEY)
    if stored is None:
        raise MttError(
            f"{args.model!r} holds no reference results (it was not exported by this version "
            "of mtt); nothing to verify"
        )
    try:
        stored = read_stored(stored, model.capabilities().outputs)
    except ValueError as error:
        raise MttError(
            f"the reference results stored in {args.model!r} are damaged ({error}); export "
            "the model again from its checkpoint (mtt export)"
        ) from None
    problems = verify(model, stored, model.capabilities().dtype)
    if problems:
        raise MttError(
            f"{args.model!r} does not reproduce its reference results: " + "; ".join(problems)
        )
    count = len(stored["structures"])
    print(f"{args.model}: all {count} reference structures reproduced")
