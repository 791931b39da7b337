"""Direct (non-conservative) forces and stress: names, declared outputs and TensorMaps.

An :class:`mtt.energy_model.EnergyModel` whose architecture has direct heads predicts, per
energy target, the quantities ``<target>/direct_forces`` (per atom) and
``<target>/direct_stress`` (per structure). They are trained against the labels of the exact
gradients (``<target>/forces``, ``<target>/stress``; see
:func:`mtt.training.batches.label_key`) and exported as metatomic's standard outputs
``non_conservative_force`` and ``non_conservative_stress`` (variants follow the energy's:
``energy/pbe0/direct_forces`` is ``non_conservative_force/pbe0``).
"""

from typing import Dict, List, Optional

import torch
from metatensor.torch import Labels, TensorMap
from metatomic.torch import ModelOutput

from .data.graph import Graph
from .gradients import periodic_volumes
from .outputs import force_tensormap, stress_tensormap


def direct_target(quantity: str) -> str:
    """``energy/pbe0`` for ``energy/pbe0/direct_forces``."""
    return quantity[: quantity.rfind("/")]


def direct_output_name(quantity: str) -> str:
    """metatomic's output of a direct quantity, e.g. ``non_conservative_stress/pbe0`` for
    ``energy/pbe0/direct_stress``."""
    forces = quantity.endswith("/direct_forces")
    base = "non_conservative_force" if forces else "non_conservative_stress"
    return base + direct_target(quantity)[len("energy") :]


def declared_outputs(
    quantities: List[str], units: Dict[str, str], length_unit: str
) -> Dict[str, ModelOutput]:
    """The ``ModelOutput`` of each direct quantity; ``units``: energy unit per target."""
    outputs = {}
    for quantity in quantities:
        target = direct_target(quantity)
        forces = quantity.endswith("/direct_forces")
        outputs[direct_output_name(quantity)] = ModelOutput(
            unit=f"{units[target]}/{length_unit}" + ("" if forces else "^3"),
            sample_kind="atom" if forces else "system",
            description=(
                f"direct (non-conservative) {'forces' if forces else 'stress'} of {target}, "
                "not the gradient of the energy"
            ),
        )
    return outputs


def structure_stress(graph: Graph, per_atom: torch.Tensor) -> torch.Tensor:
    """Stress ``[S, 3, 3]`` from per-atom virial contributions ``[N, 3, 3]``: their sum per
    structure over its volume (zero for structures that are not fully periodic)."""
    n_systems = graph.n_atoms.shape[0]
    summed = torch.zeros(n_systems, 3, 3, dtype=per_atom.dtype, device=per_atom.device)
    summed = summed.index_add(0, graph.system_index, per_atom)
    return summed / periodic_volumes(graph)[:, None, None]


def direct_tensormaps(
    graph: Graph,
    values: Dict[str, torch.Tensor],
    outputs: Dict[str, ModelOutput],
    selected_atoms: Optional[Labels],
) -> Dict[str, TensorMap]:
    """The requested ``non_conservative_force``/``non_conservative_stress`` outputs, from
    per-atom direct values by quantity (forces ``[N, 3]``, virials ``[N, 3, 3]``)."""
    results: Dict[str, TensorMap] = {}
    for quantity, value in values.items():
        output = direct_output_name(quantity)
        if output not in outputs:
            continue
        property_name = output.split("/")[0]
        if quantity.endswith("/direct_forces"):
            if outputs[output].sample_kind != "atom":
                # metatomic passes such a request on (outputs per atom may be summed), but a
                # sum of forces over the atoms is no force
                raise ValueError(
                    "'" + output + "' holds one force per atom: request it per atom "
                    "(sample_kind 'atom' in its ModelOutput), as engines do"
                )
            results[output] = force_tensormap(
                value, graph.system_index, graph.n_atoms, property_name, selected_atoms
            )
        else:
            volumes = periodic_volumes(graph)
            results[output] = stress_tensormap(
                value, graph.system_index, graph.n_atoms, volumes, property_name, selected_atoms
            )
    return results
