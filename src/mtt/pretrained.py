"""Pretrained models mtt builds from weights shipped in other packages, by name.

``mtt export sevennet-0 -o model.pt`` writes such a model as shipped (for zero-shot use and
comparison), and ``finetune: {read_from: sevennet-0}`` fine-tunes it. Each entry names the
architecture folder that builds it and its ``architecture.model`` hypers; the package holding
the weights is an optional extra (``pip install -e ".[sevenn]"`` in the clone).
"""

from typing import Any, Dict, List, Tuple

from .errors import MttError

PRETRAINED: Dict[str, Tuple[str, Dict[str, Any], str]] = {
    "sevennet-0": ("sevenn", {"checkpoint": "sevennet-0"}, "SevenNet-0 (11Jul2024), MIT"),
    "sevennet-0_22may2024": (
        "sevenn",
        {"checkpoint": "sevennet-0_22may2024"},
        "SevenNet-0 (22May2024), MIT",
    ),
    "sevennet-l3i5": ("sevenn", {"checkpoint": "sevennet-l3i5"}, "SevenNet-l3i5, MIT"),
}


def names() -> List[str]:
    return sorted(PRETRAINED)


def load(name: str):
    """The pretrained model ``name`` as shipped: float32, eval mode, energies in eV with
    forces and stress, every element it knows."""
    import torch

    from . import architectures
    from .data.targets import DatasetInfo, TargetInfo
    from .hypers import parse

    if name not in PRETRAINED:
        raise MttError(f"unknown pretrained model {name!r}; known: {', '.join(names())}")
    architecture_name, hypers, description = PRETRAINED[name]
    architecture = architectures.load(architecture_name)
    model_class = architecture.__model__
    energy = TargetInfo("energy", "eV", forces=True, stress=True, description=description)
    info = DatasetInfo("angstrom", [1], {"energy": energy})
    model_hypers = parse(model_class.__hypers__, hypers, "architecture.model")
    return model_class(model_hypers, info).to(torch.float32).eval()


def export(name: str, output: str, force: bool = False, dtype=None) -> str:
    """Export the pretrained model ``name`` to ``output`` (``mtt export <name>``)."""
    import torch

    from .api import refuse_overwrite, save_model

    refuse_overwrite(output, force)
    model = load(name)
    if dtype is not None:
        model = model.to({"float32": torch.float32, "float64": torch.float64}[dtype])
    save_model(model.export(), output)
    return output
