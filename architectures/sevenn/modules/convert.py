"""SevenNet checkpoints and models (``sevenn``, e3nn) into the plain-torch layers of
:mod:`.layers`. Only this file imports ``sevenn`` and ``e3nn``, and only when called."""

import math
import os
from typing import Any, Dict, Tuple

import torch

from mtt.errors import MttError

from .layers import (
    Convolution,
    Gate,
    Interaction,
    IrrepsLinear,
    RadialEmbedding,
    RadialMLP,
    SevenNetCore,
)

INSTALL = (
    "SevenNet needs the optional dependency sevenn: pip install sevenn==0.13.0 (or pip "
    "install -e '.[sevenn]' in mtt's clone)"
)

# what the SevenNet config must hold to rebuild the network (mtt stores it in the hypers)
CONFIG_KEYS = (
    "cutoff",
    "channel",
    "irreps_manual",
    "lmax",
    "lmax_edge",
    "lmax_node",
    "is_parity",
    "num_convolution_layer",
    "radial_basis",
    "cutoff_function",
    "act_radial",
    "act_scalar",
    "act_gate",
    "weight_nn_hidden_neurons",
    "conv_denominator",
    "train_denominator",
    "train_shift_scale",
    "use_bias_in_linear",
    "readout_as_fcn",
    "self_connection_type",
    "interaction_type",
    "_normalize_sph",
    "chemical_species",
    "_number_of_species",
    "shift",
    "scale",
    "version",
)


# checkpoints inside the sevenn wheel (no download), by name: the sevenn._const attribute
# holding each one's path
SHIPPED = {
    "sevennet-0": "SEVENNET_0_11Jul2024",
    "sevennet-0_22may2024": "SEVENNET_0_22May2024",
    "sevennet-l3i5": "SEVENNET_l3i5",
}


def _sevenn():
    try:
        import sevenn._const
    except ImportError as error:
        raise MttError(INSTALL) from error
    return sevenn


def shipped_checkpoint(name: str) -> str:
    """Path of a checkpoint shipped inside the installed sevenn wheel (never downloaded)."""
    sevenn = _sevenn()
    attribute = SHIPPED.get(name.lower().replace("7net", "sevennet"))
    path = getattr(sevenn._const, attribute, "") if attribute else ""
    if not os.path.isfile(path):
        raise MttError(
            f"{name!r} is neither a file nor a checkpoint shipped with sevenn "
            f"({', '.join(SHIPPED)})"
        )
    return path


def _inside_sevenn(path: str) -> bool:
    package = os.path.dirname(os.path.realpath(_sevenn().__file__))
    return os.path.realpath(path).startswith(package + os.sep)


def load_checkpoint(checkpoint: str, trust_file: bool):
    """The SevenNet model and its config from a shipped name or a ``.pth`` file.

    SevenNet checkpoints are pickles (sevenn reads them with ``torch.load(weights_only=
    False)``): loading one runs code stored in it. Files inside the installed sevenn package
    are its own data; any other file is read only with ``trust_file``
    (``architecture.model.trust_checkpoint``).
    """
    if os.path.isfile(checkpoint):
        path = checkpoint
        if not (trust_file or _inside_sevenn(path)):
            raise MttError(
                f"{checkpoint!r} is a SevenNet checkpoint, a pickle that runs code when loaded; "
                "set architecture.model.trust_checkpoint: true if you trust its origin"
            )
    else:
        path = shipped_checkpoint(checkpoint)
    from sevenn.checkpoint import SevenNetCheckpoint

    loaded = SevenNetCheckpoint(path)
    model = loaded.build_model()
    config = plain_config(loaded.config)
    # the convolutions' denominators are weights of the checkpoint, not always in its config
    config["conv_denominator"] = [
        float(module.denominator)
        for name, module in model._modules.items()
        if name.endswith("_convolution")
    ]
    return model, config


def plain_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """The keys of a SevenNet config that define the network, as plain Python values."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if hasattr(value, "tolist"):
            return value.tolist()
        return value

    return {key: plain(config[key]) for key in CONFIG_KEYS if key in config}


def build_from_config(config: Dict[str, Any]):
    """A SevenNet model with the structure of ``config`` (weights random)."""
    _sevenn()
    import sevenn._const as const
    from sevenn.model_build import build_E3_equivariant_model
    from sevenn.nn.node_embedding import get_type_mapper_from_specie

    full = dict(const.model_defaults(dict(config)))
    full.update(config)
    full["_type_map"] = get_type_mapper_from_specie(full["chemical_species"])
    full["cuequivariance_config"] = {}
    full["use_flash_tp"] = False
    full["use_oeq"] = False
    return build_E3_equivariant_model(full)


def convert(model, n_targets: int) -> Tuple[SevenNetCore, torch.Tensor, torch.Tensor]:
    """The plain-torch network of a SevenNet ``AtomGraphSequential`` (same weights), with
    its per-species energy shift and scale (indexed like its one-hot species)."""
    modules = dict(model._modules)
    expected = {"edge_embedding", "onehot_idx_to_onehot", "onehot_to_feature_x"}
    expected |= {"reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy"}
    expected |= {"reduce_total_enegy", "force_output"}
    n_layers = sum(1 for name in modules if name.endswith("_convolution"))
    for k in range(n_layers):
        for part in ("self_connection_intro", "self_interaction_1", "convolution"):
            expected.add(f"{k}_{part}")
        for part in ("self_interaction_2", "self_connection_outro", "equivariant_gate"):
            expected.add(f"{k}_{part}")
    unknown = sorted(set(modules) - expected)
    if unknown:
        raise MttError(f"this SevenNet model has modules mtt cannot convert yet: {unknown}")
    edge = modules["edge_embedding"]
    switch = edge.cutoff_function
    if hasattr(switch, "r_on"):  # XPLOR
        radial = RadialEmbedding(edge.basis_function.num_basis, switch.r_cut, switch.r_on)
    else:  # NequIP's polynomial
        radial = RadialEmbedding(
            edge.basis_function.num_basis, switch.cutoff_length, 0.0, int(switch.p)
        )
    with torch.no_grad():
        radial.coeffs.copy_(edge.basis_function.coeffs)
    embedding = linear_from_e3nn(modules["onehot_to_feature_x"].linear)
    layers = [_interaction(modules, k) for k in range(n_layers)]
    hidden = _scalar_linear(modules["reduce_input_to_hidden"].linear)
    readout_1 = _scalar_linear(modules["reduce_hidden_to_energy"].linear)
    readout = torch.nn.Linear(readout_1.in_features, n_targets, bias=False)
    with torch.no_grad():
        readout.weight.copy_(readout_1.weight.expand(n_targets, -1))
    core = SevenNetCore(
        modules["onehot_idx_to_onehot"].num_classes,
        edge.spherical.lmax,
        radial,
        embedding,
        layers,
        hidden,
        readout,
    )
    rescale = modules["rescale_atomic_energy"]
    return core, rescale.shift.detach().clone(), rescale.scale.detach().clone()


def _check_activation(module, what: str) -> float:
    """The normalisation constant of an e3nn-normalised SiLU."""
    if module.f is not torch.nn.functional.silu:
        raise MttError(f"SevenNet {what} activation {module.f} is not supported (only SiLU)")
    return 1.0 if module._is_id else float(module.cst)


def _interaction(modules, k: int) -> Interaction:
    intro = modules[f"{k}_self_connection_intro"]
    if not hasattr(intro, "linear"):
        raise MttError("only SevenNet's 'linear' self-connection is supported")
    conv = modules[f"{k}_convolution"]
    gate = modules[f"{k}_equivariant_gate"].gate
    scalar_norm = _check_activation(gate.act_scalars.acts[0], "scalar")
    gate_norm = (
        _check_activation(gate.act_gates.acts[0], "gate") if len(gate.act_gates.acts) else 1.0
    )
    for act in list(gate.act_scalars.acts) + list(gate.act_gates.acts):
        _check_activation(act, "gate")
    gated = [[ir.l, mul] for mul, ir in gate.irreps_gated]
    return Interaction(
        linear_from_e3nn(intro.linear),
        linear_from_e3nn(modules[f"{k}_self_interaction_1"].linear),
        _convolution(conv),
        linear_from_e3nn(modules[f"{k}_self_interaction_2"].linear),
        Gate(gate.irreps_scalars.dim, gated, scalar_norm, gate_norm),
    )


def linear_from_e3nn(linear) -> IrrepsLinear:
    """e3nn ``Linear`` with at most one path into each output irrep as :class:`IrrepsLinear`."""
    if linear.bias.numel() != 0:
        raise MttError("SevenNet linear layers with biases are not supported")
    targets = [i.i_out for i in linear.instructions]
    if len(set(targets)) != len(targets):
        raise MttError(f"e3nn Linear {linear} sums several paths into one irrep: not converted")
    paths = [[i.i_in, i.i_out] for i in linear.instructions]
    in_blocks = [[ir.l, mul] for mul, ir in linear.irreps_in]
    result = IrrepsLinear(paths, in_blocks, [[ir.l, mul] for mul, ir in linear.irreps_out])
    offset = 0
    with torch.no_grad():
        for instruction, torch_linear in zip(linear.instructions, result.linears):
            mul_in, mul_out = instruction.path_shape
            weight = linear.weight[offset : offset + mul_in * mul_out].reshape(mul_in, mul_out)
            torch_linear.weight.copy_((instruction.path_weight * weight).T)
            offset += mul_in * mul_out
    return result


def _scalar_linear(linear) -> torch.nn.Linear:
    converted = linear_from_e3nn(linear)
    if len(converted.linears) != 1 or converted.in_shapes[0][1] != 1:
        raise MttError("SevenNet's readout must act on scalars only")
    return converted.linears[0]


def _convolution(conv) -> Convolution:
    from e3nn import o3

    tp = conv.convolution
    weight_nn = conv.weight_nn
    paths, w3js, path_weights = [], [], []
    for k, ins in enumerate(tp.instructions):
        if ins.connection_mode != "uvu" or ins.i_out != k or tp.irreps_in2[ins.i_in2].mul != 1:
            raise MttError("only SevenNet's 'uvu' convolutions with one path per output convert")
        mul, ir_in = tp.irreps_in1[ins.i_in1]
        l_sh, l_out = tp.irreps_in2[ins.i_in2].ir.l, tp.irreps_out[ins.i_out].ir.l
        paths.append([ir_in.l, mul, ins.i_in1, l_sh, ins.i_in2, l_out])
        w3js.append(o3.wigner_3j(ir_in.l, l_sh, l_out, dtype=torch.float32))
        path_weights += [ins.path_weight] * mul
    in_sizes = [mul * ir.dim for mul, ir in tp.irreps_in1]
    sh_sizes = [mul * ir.dim for mul, ir in tp.irreps_in2]
    size = max(max(w.shape) for w in w3js)
    padded = torch.zeros(len(w3js), size, size, size)
    for k, w in enumerate(w3js):
        padded[k, : w.shape[0], : w.shape[1], : w.shape[2]] = w
    layers = [getattr(weight_nn, f"layer{i}") for i in range(len(weight_nn.hs) - 1)]
    act_norm = _check_activation(layers[0].act, "radial") if len(layers) > 1 else 1.0
    mlp = RadialMLP(list(weight_nn.hs), act_norm)
    with torch.no_grad():
        for layer, linear in zip(layers, mlp.layers):
            if layer.act is not None and layer.var_out != 1:
                raise MttError("SevenNet radial networks with output variance are not supported")
            factor = layer.h_in * layer.var_in / (1.0 if layer.act is not None else layer.var_out)
            linear.weight.copy_((layer.weight / math.sqrt(factor)).T)
        # e3nn's path normalisation, folded into the radial MLP's output columns
        mlp.layers[-1].weight.mul_(torch.tensor(path_weights).unsqueeze(1))
    return Convolution(paths, in_sizes, sh_sizes, padded, mlp, float(conv.denominator))
