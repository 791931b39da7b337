"""SevenNet's layers (a NequIP-style equivariant network) in plain torch.

Features are e3nn's layout: irreps ``mul x l`` one after the other, each block stored as
``[mul, 2l + 1]`` flattened. Every learnable matrix is a ``torch.nn.Linear`` acting on the
multiplicities (e3nn's path normalisation folded into its weight), so that mtt's LoRA
adapters, ``heads`` and ``freeze`` apply to SevenNet as to any other architecture. The
constants e3nn computes (Wigner 3j symbols, activation normalisations) are copied in by
:mod:`.convert`; nothing here imports e3nn, so the exported model runs without it.
"""

import math
from typing import List

import torch
from torch import Tensor


def spherical_harmonics(vectors: Tensor, lmax: int) -> Tensor:
    """e3nn's real spherical harmonics of the unit vectors, ``component`` normalisation
    (``|Y^l|^2 = 2l + 1``), ``l = 0 .. lmax`` (at most 3), concatenated."""
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    sh = [torch.ones_like(x)]
    if lmax >= 1:
        sh += [math.sqrt(3) * x, math.sqrt(3) * y, math.sqrt(3) * z]
    if lmax >= 2:
        sh_2_0 = math.sqrt(15) * x * z
        sh_2_4 = 0.5 * math.sqrt(15) * (z * z - x * x)
        y2 = y * y
        x2z2 = x * x + z * z
        sh += [sh_2_0, math.sqrt(15) * x * y, math.sqrt(5) * (y2 - 0.5 * x2z2)]
        sh += [math.sqrt(15) * y * z, sh_2_4]
        if lmax >= 3:
            sh += [
                (1 / 6) * math.sqrt(42) * (sh_2_0 * z + sh_2_4 * x),
                math.sqrt(7) * sh_2_0 * y,
                (1 / 8) * math.sqrt(168) * (4.0 * y2 - x2z2) * x,
                0.5 * math.sqrt(7) * y * (2.0 * y2 - 3.0 * x2z2),
                (1 / 8) * math.sqrt(168) * z * (4.0 * y2 - x2z2),
                math.sqrt(7) * sh_2_4 * y,
                (1 / 6) * math.sqrt(42) * (sh_2_4 * z - sh_2_0 * x),
            ]
    return torch.stack(sh, dim=-1)


class RadialEmbedding(torch.nn.Module):
    """Bessel functions ``(2 / r_c) sin(k_n r) / r`` (trainable ``k_n``) times a switch that
    brings them to 0 at ``cutoff``: XPLOR's (1 up to ``cutoff_on``, then a smooth step) or,
    with ``poly_p > 0``, NequIP's polynomial of degree ``poly_p + 2``."""

    def __init__(self, n_basis: int, cutoff: float, cutoff_on: float, poly_p: int = 0):
        super().__init__()
        self.cutoff = float(cutoff)
        self.cutoff_on = float(cutoff_on)
        self.poly_p = float(poly_p)
        self.prefactor = 2.0 / cutoff
        self.coeffs = torch.nn.Parameter(
            torch.arange(1, n_basis + 1, dtype=torch.float32) * math.pi / cutoff
        )

    def switch(self, r: Tensor) -> Tensor:
        if self.poly_p > 0:
            p, x = self.poly_p, r / self.cutoff
            return (
                1
                - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
                + p * (p + 2.0) * torch.pow(x, p + 1.0)
                - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
            )
        r2, on2, cut2 = r * r, self.cutoff_on**2, self.cutoff**2
        smooth = (cut2 - r2) ** 2 * (cut2 + 2 * r2 - 3 * on2) / (cut2 - on2) ** 3
        return torch.where(r < self.cutoff_on, torch.ones_like(r), smooth)

    def forward(self, r: Tensor) -> Tensor:
        basis = self.prefactor * torch.sin(self.coeffs * r.unsqueeze(-1)) / r.unsqueeze(-1)
        return basis * self.switch(r).unsqueeze(-1)


class IrrepsLinear(torch.nn.Module):
    """e3nn's ``Linear``: per output irrep, one ``torch.nn.Linear`` mixing the multiplicities
    of the input irrep of the same kind (the same matrix for every component ``m``, which
    keeps it equivariant); output irreps without an input of their kind are zero."""

    def __init__(
        self, paths: List[List[int]], in_blocks: List[List[int]], out_blocks: List[List[int]]
    ):
        """``paths``: ``[in_block, out_block]`` per path; ``in_blocks`` and ``out_blocks``:
        ``[l, mul]`` per input and output irrep, in the order of the features."""
        super().__init__()
        self.paths: List[List[int]] = paths
        self.in_sizes: List[int] = [mul * (2 * deg + 1) for deg, mul in in_blocks]
        self.in_shapes: List[List[int]] = [[mul, 2 * deg + 1] for deg, mul in in_blocks]
        self.out_sizes: List[int] = [mul * (2 * deg + 1) for deg, mul in out_blocks]
        self.source: List[int] = [-1] * len(out_blocks)
        for k, path in enumerate(paths):
            self.source[path[1]] = k
        self.linears = torch.nn.ModuleList(
            torch.nn.Linear(in_blocks[p[0]][1], out_blocks[p[1]][1], bias=False) for p in paths
        )

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        blocks = torch.split(x, self.in_sizes, dim=1)
        computed: List[Tensor] = []
        for k, linear in enumerate(self.linears):
            mul, dim = self.in_shapes[self.paths[k][0]][0], self.in_shapes[self.paths[k][0]][1]
            block = blocks[self.paths[k][0]].reshape(n, mul, dim).transpose(1, 2)
            computed.append(linear(block).transpose(1, 2).reshape(n, -1))
        outputs: List[Tensor] = []
        for slot, size in enumerate(self.out_sizes):
            source = self.source[slot]
            if source < 0:
                outputs.append(torch.zeros(n, size, dtype=x.dtype, device=x.device))
            else:
                outputs.append(computed[source])
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class Gate(torch.nn.Module):
    """e3nn's ``Gate``: the first scalars go through SiLU; the next ones, through SiLU too,
    multiply the vectors and tensors (one gate per irrep); e3nn's normalisation constants
    make each activation's second moment 1 on a standard normal input."""

    def __init__(
        self, n_scalars: int, gated: List[List[int]], scalar_norm: float, gate_norm: float
    ):
        """``gated``: ``[l, mul]`` per gated irrep, in the order of the features."""
        super().__init__()
        self.n_scalars = n_scalars
        self.n_gates = sum(mul for _, mul in gated)
        self.scalar_norm = float(scalar_norm)
        self.gate_norm = float(gate_norm)
        index: List[int] = []
        offset = 0
        for degree, mul in gated:
            index += [offset + u for u in range(mul) for _ in range(2 * degree + 1)]
            offset += mul
        self.register_buffer("gate_index", torch.tensor(index, dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        if self.n_gates == 0:
            return torch.nn.functional.silu(x) * self.scalar_norm
        n_gated = x.shape[1] - self.n_scalars - self.n_gates
        scalars, gates, gated = torch.split(x, [self.n_scalars, self.n_gates, n_gated], dim=1)
        scalars = torch.nn.functional.silu(scalars) * self.scalar_norm
        gates = torch.nn.functional.silu(gates) * self.gate_norm
        return torch.cat([scalars, gated * gates[:, self.gate_index]], dim=1)


class RadialMLP(torch.nn.Module):
    """e3nn's ``FullyConnectedNet`` without biases: SiLU (normalised) between layers."""

    def __init__(self, sizes: List[int], act_norm: float):
        super().__init__()
        self.act_norm = float(act_norm)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:])
        )

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k != last:
                x = torch.nn.functional.silu(x) * self.act_norm
        return x


class Convolution(torch.nn.Module):
    """NequIP's interaction: each neighbour's features ``x_j`` are coupled to the spherical
    harmonics of ``r_ij`` (e3nn's ``uvu`` tensor product, one weight per channel and path
    from a radial MLP of ``|r_ij|``) and summed on the centre, divided by ``denominator``.

    Inputs are cut with ``torch.split`` rather than slices: the backward pass of a slice
    fills a zero tensor as large as its input, once per path (a third of the training time
    of SevenNet-0 on small molecules went there)."""

    def __init__(
        self,
        paths: List[List[int]],
        in_sizes: List[int],
        sh_sizes: List[int],
        w3j: Tensor,
        radial: RadialMLP,
        denominator: float,
    ):
        """``paths``: ``[l_in, mul, in_block, l_sh, sh_block, l_out]`` per output block, in
        output order, where the blocks index the input irreps (of sizes ``in_sizes``) and the
        spherical harmonics (``sh_sizes``); ``w3j``: the paths' Wigner 3j symbols,
        zero-padded to ``[P, D, D, D]``."""
        super().__init__()
        self.paths: List[List[int]] = paths
        self.in_sizes: List[int] = in_sizes
        self.sh_sizes: List[int] = sh_sizes
        self.weight_sizes: List[int] = [p[1] for p in paths]
        self.radial = radial
        self.register_buffer("w3j", w3j)
        self.denominator = float(denominator)

    def forward(
        self, x: Tensor, sh: Tensor, radial: Tensor, edge_i: Tensor, edge_j: Tensor
    ) -> Tensor:
        n_atoms, n_edges = x.shape[0], edge_j.shape[0]
        weights = torch.split(self.radial(radial), self.weight_sizes, dim=1)
        blocks = torch.split(x, self.in_sizes, dim=1)
        harmonics = torch.split(sh, self.sh_sizes, dim=1)
        messages: List[Tensor] = []
        for k, path in enumerate(self.paths):
            mul = path[1]
            d_in, d_sh, d_out = 2 * path[0] + 1, 2 * path[3] + 1, 2 * path[5] + 1
            # gather on edges after cutting the atoms' features (fewer rows)
            block = blocks[path[2]].reshape(n_atoms, mul, d_in)[edge_j]
            w3j = self.w3j[k, :d_in, :d_sh, :d_out]
            coupling = torch.einsum("ej,ijk->eik", harmonics[path[4]], w3j)
            message = torch.bmm(block, coupling) * weights[k].unsqueeze(-1)
            messages.append(message.reshape(n_edges, mul * d_out))
        message = torch.cat(messages, dim=1)
        out = torch.zeros(n_atoms, message.shape[1], dtype=x.dtype, device=x.device)
        return out.index_add(0, edge_i, message) / self.denominator


class Interaction(torch.nn.Module):
    """One SevenNet layer: linear self-connection, linear, convolution, linear, sum, gate."""

    def __init__(
        self,
        self_connection: IrrepsLinear,
        linear_1: IrrepsLinear,
        convolution: Convolution,
        linear_2: IrrepsLinear,
        gate: Gate,
    ):
        super().__init__()
        self.self_connection = self_connection
        self.linear_1 = linear_1
        self.convolution = convolution
        self.linear_2 = linear_2
        self.gate = gate

    def forward(
        self, x: Tensor, sh: Tensor, radial: Tensor, edge_i: Tensor, edge_j: Tensor
    ) -> Tensor:
        skip = self.self_connection(x)
        x = self.convolution(self.linear_1(x), sh, radial, edge_i, edge_j)
        return self.gate(self.linear_2(x) + skip)


class SevenNetCore(torch.nn.Module):
    """Atom types and neighbour vectors to unscaled per-atom energies ``[N, n_targets]``."""

    def __init__(
        self,
        n_species: int,
        lmax_sh: int,
        radial: RadialEmbedding,
        embedding: IrrepsLinear,
        layers: List[Interaction],
        hidden: torch.nn.Linear,
        readout: torch.nn.Linear,
    ):
        super().__init__()
        self.n_species = n_species
        self.lmax_sh = lmax_sh
        self.radial = radial
        self.embedding = embedding
        self.layers = torch.nn.ModuleList(layers)
        self.hidden = hidden
        self.readout = readout

    def forward(self, species: Tensor, vectors: Tensor, edge_i: Tensor, edge_j: Tensor) -> Tensor:
        r = torch.linalg.vector_norm(vectors, dim=-1)
        radial = self.radial(r)
        sh = spherical_harmonics(vectors, self.lmax_sh)
        x = torch.nn.functional.one_hot(species, self.n_species).to(vectors.dtype)
        x = self.embedding(x)
        for layer in self.layers:
            x = layer(x, sh, radial, edge_i, edge_j)
        return self.readout(self.hidden(x))
