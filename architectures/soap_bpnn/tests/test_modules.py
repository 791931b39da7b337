"""Tests of the SOAP-BPNN descriptor layers: spherical harmonics, radial basis, power spectrum.

References are independent of the code under test: numpy's Legendre polynomials (through the
addition theorem), exact Gauss-Legendre quadratures, finite differences and symmetry operations.
"""

import math

import numpy as np
import pytest
import torch

from ..modules.radial import RadialBasis, cosine_cutoff
from ..modules.soap import SoapPowerSpectrum
from ..modules.spherical_harmonics import (
    SphericalHarmonics,
    monomials_of_degree,
    real_spherical_harmonics,
)

CUTOFF = 4.0
WIDTH = 1.0


def _unit_vectors(n, seed):
    generator = np.random.default_rng(seed)
    v = generator.normal(size=(n, 3))
    return torch.tensor(v / np.linalg.norm(v, axis=1, keepdims=True))


def _legendre(ell, x):
    """P_l(x) from numpy."""
    return np.polynomial.legendre.legval(x, [0.0] * ell + [1.0])


def _environment(seed, n_atoms=5, n_edges=40, n_species=2, empty_atom=None):
    """Random edges in float64, lengths in [0.6, 1.2 * CUTOFF] (some beyond the cutoff)."""
    generator = np.random.default_rng(seed)
    directions = generator.normal(size=(n_edges, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lengths = generator.uniform(0.6, 1.2 * CUTOFF, size=(n_edges, 1))
    centers = generator.integers(0, n_atoms, size=n_edges)
    if empty_atom is not None:
        centers[centers == empty_atom] = (empty_atom + 1) % n_atoms
    species = generator.integers(0, n_species, size=n_edges)
    return (
        torch.tensor(directions * lengths),
        torch.tensor(centers, dtype=torch.int64),
        torch.tensor(species, dtype=torch.int64),
    )


def _random_orthogonal(seed, reflection):
    generator = np.random.default_rng(seed)
    q, r = np.linalg.qr(generator.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) < 0) != reflection:
        q[:, 0] *= -1.0
    return torch.tensor(q)


def _soap(max_radial=3, max_angular=3, n_species=2):
    return SoapPowerSpectrum(CUTOFF, WIDTH, max_radial, max_angular, n_species)


# ------------------------------------------------------------------------------------------------
# spherical harmonics
# ------------------------------------------------------------------------------------------------


def test_addition_theorem():
    """sum_m Y_lm(u) Y_lm(v) = (2l+1)/(4 pi) P_l(u.v) up to l = 6.

    A failure means a wrong normalisation or a wrong recurrence for some (l, m), i.e. the
    harmonics are not an orthonormal basis of the degree-l harmonics.
    """
    max_angular = 6
    u = _unit_vectors(50, seed=1)
    v = _unit_vectors(50, seed=2)
    y_u = real_spherical_harmonics(u, max_angular)
    y_v = real_spherical_harmonics(v, max_angular)
    assert y_u.shape == (50, (max_angular + 1) ** 2)
    cosines = (u * v).sum(dim=1).numpy()
    for ell in range(max_angular + 1):
        block = slice(ell * ell, (ell + 1) * (ell + 1))
        computed = (y_u[:, block] * y_v[:, block]).sum(dim=1).numpy()
        expected = (2 * ell + 1) / (4 * math.pi) * _legendre(ell, cosines)
        np.testing.assert_allclose(computed, expected, rtol=0, atol=1e-10, err_msg=f"l={ell}")


def test_orthonormality_quadrature():
    """The Gram matrix of Y_lm over the sphere is the identity (exact quadrature).

    Gauss-Legendre in cos(theta) times a uniform grid in phi integrates products of harmonics up
    to l = 6 exactly; a failure means wrong normalisations or mixed-up (l, m) columns.
    """
    max_angular = 6
    z, z_weights = np.polynomial.legendre.leggauss(max_angular + 4)
    n_phi = 2 * max_angular + 4
    phi = 2 * math.pi * np.arange(n_phi) / n_phi
    sin_theta = np.sqrt(1.0 - z**2)
    points = np.stack(
        [
            np.outer(sin_theta, np.cos(phi)).ravel(),
            np.outer(sin_theta, np.sin(phi)).ravel(),
            np.repeat(z, n_phi),
        ],
        axis=1,
    )
    weights = np.repeat(z_weights, n_phi) * (2 * math.pi / n_phi)
    y = real_spherical_harmonics(torch.tensor(points), max_angular).numpy()
    gram = (y * weights[:, None]).T @ y
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), rtol=0, atol=1e-10)


def test_l1_is_y_z_x():
    """Y_1 = sqrt(3/(4 pi)) (y, z, x): documents the m order and sign convention.

    A failure means the m = -l..l order or the phase convention changed (invariants would not
    notice, anything relying on the Cartesian form of l = 1 would).
    """
    u = _unit_vectors(10, seed=3)
    y = real_spherical_harmonics(u, 1)
    expected = math.sqrt(3 / (4 * math.pi)) * u[:, [1, 2, 0]]
    torch.testing.assert_close(y[:, 1:4], expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(y[:, 0], torch.full((10,), 0.5 / math.sqrt(math.pi)).double())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_poles_are_regular(sign):
    """At u = (0, 0, +-1) only m = 0 survives, Y_l0 = sqrt((2l+1)/(4 pi)) (+-1)^l, gradients finite.

    A failure means the harmonics use angles (atan2/acos) and are singular at the poles, or the
    m = 0 normalisation is wrong.
    """
    max_angular = 6
    u = torch.tensor([[0.0, 0.0, sign]], dtype=torch.float64, requires_grad=True)
    y = real_spherical_harmonics(u, max_angular)
    assert torch.isfinite(y).all()
    for ell in range(max_angular + 1):
        row = y[0, ell * ell : (ell + 1) * (ell + 1)].detach()
        expected = torch.zeros(2 * ell + 1, dtype=torch.float64)
        expected[ell] = math.sqrt((2 * ell + 1) / (4 * math.pi)) * sign**ell
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-12)
    (gradient,) = torch.autograd.grad(y.sum(), u)
    assert torch.isfinite(gradient).all()


def test_spherical_harmonics_script_and_float32():
    """The scripted module equals eager, and float32 inputs give float32 outputs.

    A failure means the code is not TorchScript-compatible or hard-codes a dtype.
    """
    u = _unit_vectors(20, seed=4)
    eager = real_spherical_harmonics(u, 4)
    module = torch.jit.script(SphericalHarmonics(4))(u)
    torch.testing.assert_close(module, eager, rtol=0, atol=0)
    single = real_spherical_harmonics(u.float(), 4)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, eager.float(), rtol=1e-5, atol=1e-6)


def _closed_forms(u):
    """Y_2m and Y_3m, m = -l..l, from the textbook table (real, no Condon-Shortley phase)."""
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    pi = math.pi
    l2 = [
        0.5 * math.sqrt(15 / pi) * x * y,
        0.5 * math.sqrt(15 / pi) * y * z,
        0.25 * math.sqrt(5 / pi) * (3 * z**2 - 1),
        0.5 * math.sqrt(15 / pi) * x * z,
        0.25 * math.sqrt(15 / pi) * (x**2 - y**2),
    ]
    l3 = [
        0.25 * math.sqrt(35 / (2 * pi)) * y * (3 * x**2 - y**2),
        0.5 * math.sqrt(105 / pi) * x * y * z,
        0.25 * math.sqrt(21 / (2 * pi)) * y * (5 * z**2 - 1),
        0.25 * math.sqrt(7 / pi) * (5 * z**3 - 3 * z),
        0.25 * math.sqrt(21 / (2 * pi)) * x * (5 * z**2 - 1),
        0.25 * math.sqrt(105 / pi) * z * (x**2 - y**2),
        0.25 * math.sqrt(35 / (2 * pi)) * x * (x**2 - 3 * y**2),
    ]
    return torch.stack(l2, dim=1), torch.stack(l3, dim=1)


@pytest.mark.parametrize("max_angular", [3, 4, 5])
def test_closed_forms_of_l2_and_l3(max_angular):
    """Y_2m and Y_3m equal the textbook closed forms, whatever max_angular they come with.

    The harmonics are a constant matrix applied to monomials of degrees max_angular - 1 and
    max_angular (lower degrees are raised with x^2 + y^2 + z^2 = 1), so the same Y_lm comes
    from different polynomials for different max_angular. A failure means a wrong coefficient
    matrix: a sign, a normalisation, or a mixed-up (l, m) column or monomial row.
    """
    u = _unit_vectors(200, seed=5)
    y = real_spherical_harmonics(u, max_angular)
    l2, l3 = _closed_forms(u)
    torch.testing.assert_close(y[:, 4:9], l2, rtol=0, atol=1e-13)
    torch.testing.assert_close(y[:, 9:16], l3, rtol=0, atol=1e-13)


def _recurrence_harmonics(u, max_angular):
    """The same harmonics by the associated Legendre recurrences evaluated on the points (the
    algorithm of the previous implementation), as an independent reference."""
    x, y, z = u[:, 0], u[:, 1], u[:, 2]
    columns = {}
    q_mm = 1.0 / math.sqrt(4 * math.pi)
    c, s = torch.ones_like(x), torch.zeros_like(x)
    for m in range(max_angular + 1):
        if m > 0:
            q_mm *= math.sqrt((2 * m + 1) / (2 * m))
            c, s = x * c - y * s, x * s + y * c  # Re, Im of (x + i y)^m
        q = [torch.full_like(z, q_mm), math.sqrt(2 * m + 3) * q_mm * z]
        for ell in range(m + 2, max_angular + 1):
            a = math.sqrt((4 * ell**2 - 1) / (ell**2 - m**2))
            b = math.sqrt(
                (2 * ell + 1) * ((ell - 1) ** 2 - m**2) / ((2 * ell - 3) * (ell**2 - m**2))
            )
            q.append(a * z * q[-1] - b * q[-2])
        for ell in range(m, max_angular + 1):
            if m == 0:
                columns[(ell, 0)] = q[0 if ell == m else ell - m]
            else:
                columns[(ell, m)] = math.sqrt(2) * q[ell - m] * c
                columns[(ell, -m)] = math.sqrt(2) * q[ell - m] * s
    return torch.stack(
        [columns[(ell, m)] for ell in range(max_angular + 1) for m in range(-ell, ell + 1)], dim=1
    )


@pytest.mark.parametrize("max_angular", [0, 1, 2, 4, 6])
def test_matches_recurrences_at_random_points(max_angular):
    """monomials @ coefficients equals the recurrences evaluated point by point (float64).

    A failure means the polynomial algebra building the coefficient matrix (recurrences on
    polynomials, raising degrees on the sphere) or the monomial evaluation is wrong.
    """
    u = _unit_vectors(500, seed=6)
    expected = _recurrence_harmonics(u, max_angular)
    torch.testing.assert_close(
        real_spherical_harmonics(u, max_angular), expected, rtol=0, atol=1e-12
    )


def test_monomials_order():
    """``SphericalHarmonics.monomials`` are x^a y^b z^c of degrees L - 1 and L, in the order
    of ``monomials_of_degree`` (the rows of the coefficient matrix).

    A failure means the monomials and the rows of the coefficient matrix disagree.
    """
    u = _unit_vectors(7, seed=7)
    for max_angular in range(6):
        computed = SphericalHarmonics(max_angular).monomials(u)
        exponents = [
            e for d in (max_angular - 1, max_angular) if d >= 0 for e in monomials_of_degree(d)
        ]
        assert computed.shape == (7, (max_angular + 1) ** 2) == (7, len(exponents))
        expected = torch.stack(
            [u[:, 0] ** a * u[:, 1] ** b * u[:, 2] ** c for a, b, c in exponents], 1
        )
        torch.testing.assert_close(computed, expected, rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# cutoff function and radial basis
# ------------------------------------------------------------------------------------------------


def test_cutoff_values():
    """f = 1 below cutoff - width, strictly decreasing in between, exactly 0 at/after the cutoff.

    A failure means the switching function has the wrong shape or leaks beyond the cutoff.
    """
    r = torch.linspace(0.1, 2 * CUTOFF, 2001, dtype=torch.float64)
    f = cosine_cutoff(r, CUTOFF, WIDTH)
    inner = r <= CUTOFF - WIDTH
    outer = r >= CUTOFF
    middle = ~inner & ~outer
    assert (f[inner] == 1.0).all()
    assert (f[outer] == 0.0).all()
    assert ((f[middle] > 0.0) & (f[middle] < 1.0)).all()
    assert (f[middle].diff() < 0).all()
    assert cosine_cutoff(torch.tensor([CUTOFF]), CUTOFF, WIDTH).item() == 0.0
    torch.testing.assert_close(
        cosine_cutoff(torch.tensor([CUTOFF - WIDTH / 2], dtype=torch.float64), CUTOFF, WIDTH),
        torch.tensor([0.5], dtype=torch.float64),
    )


@pytest.mark.parametrize("knot", [CUTOFF - WIDTH, CUTOFF])
def test_cutoff_derivative_is_continuous(knot):
    """One-sided finite-difference slopes on both sides of each end of the switch are ~0.

    A failure means the derivative jumps where the switch starts or ends (forces would jump when
    a neighbour crosses these distances).
    """
    h = 1e-6
    f = lambda r: cosine_cutoff(torch.tensor([r], dtype=torch.float64), CUTOFF, WIDTH).item()  # noqa: E731
    left = (f(knot) - f(knot - h)) / h
    right = (f(knot + h) - f(knot)) / h
    # a kink would give slopes of order 1/width; a smooth function gives O(h)
    assert abs(left) < 1e-4
    assert abs(right) < 1e-4
    # and in the middle of the switch the autograd derivative matches finite differences
    r = torch.tensor([CUTOFF - 0.3 * WIDTH], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(cosine_cutoff(r, CUTOFF, WIDTH).sum(), r)
    x = r.item()
    central = (f(x + h) - f(x - h)) / (2 * h)
    assert abs(gradient.item() - central) < 1e-8


def test_radial_basis_orthonormal():
    """int_0^cutoff R_n R_n' r^2 dr = delta_nn' (Gauss-Legendre with many points).

    A failure means the Bessel wave numbers or the normalisation sqrt(2/cutoff) are wrong.
    """
    nodes, weights = np.polynomial.legendre.leggauss(200)
    r = 0.5 * CUTOFF * (nodes + 1.0)
    weights = 0.5 * CUTOFF * weights * r**2
    basis = RadialBasis(6, CUTOFF)(torch.tensor(r)).numpy()
    gram = (basis * weights[:, None]).T @ basis
    np.testing.assert_allclose(gram, np.eye(6), rtol=0, atol=1e-10)
    # and the basis functions vanish at the cutoff
    at_cutoff = RadialBasis(6, CUTOFF)(torch.tensor([CUTOFF], dtype=torch.float64))
    assert at_cutoff.abs().max() < 1e-14


def test_radial_basis_small_distances():
    """R_n and dR_n/dr are finite for small r > 0 and R_n -> sqrt(2/cutoff) n pi / cutoff.

    A failure means a division that produces NaN/inf for small distances.
    """
    r = torch.tensor([1e-8, 1e-4, 0.5], dtype=torch.float64, requires_grad=True)
    basis = RadialBasis(4, CUTOFF)
    values = basis(r)
    (gradient,) = torch.autograd.grad(values.sum(), r)
    assert torch.isfinite(values).all() and torch.isfinite(gradient).all()
    limit = math.sqrt(2 / CUTOFF) * math.pi / CUTOFF * torch.arange(1, 5, dtype=torch.float64)
    torch.testing.assert_close(values[0].detach(), limit, rtol=1e-12, atol=0)
    scripted = torch.jit.script(basis)
    torch.testing.assert_close(scripted(r), values, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# power spectrum
# ------------------------------------------------------------------------------------------------


def _reference_power_spectrum(vectors, centers, species, n_atoms, max_radial, max_angular, n_sp):
    """Power spectrum from pairs of neighbours with the addition theorem (numpy, no harmonics).

    sum_m c[a n l m] c[a' n' l m] = sum_{j, k} g_an(j) g_a'n'(k) (2l+1)/(4 pi) P_l(u_j . u_k)
    with g_an(j) = R_n(r_j) f(r_j) [species(j) = a].
    """
    vectors = vectors.numpy()
    centers = centers.numpy()
    species = species.numpy()
    r = np.linalg.norm(vectors, axis=1)
    u = vectors / r[:, None]
    n = np.arange(1, max_radial + 1)
    radial = math.sqrt(2 / CUTOFF) * np.sin(np.outer(r, n) * math.pi / CUTOFF) / r[:, None]
    switch = 0.5 * (1 + np.cos(math.pi * (r - CUTOFF + WIDTH) / WIDTH))
    f = np.where(r >= CUTOFF, 0.0, np.where(r <= CUTOFF - WIDTH, 1.0, switch))
    n_channels = n_sp * max_radial
    g = np.zeros((len(r), n_channels))
    for edge in range(len(r)):
        a = species[edge]
        g[edge, a * max_radial : (a + 1) * max_radial] = radial[edge] * f[edge]

    upper = np.triu_indices(n_channels)
    pair_weight = np.where(upper[0] == upper[1], 1.0, math.sqrt(2))
    result = np.zeros((n_atoms, (max_angular + 1) * len(pair_weight)))
    full_norms = np.zeros(n_atoms)
    for atom in range(n_atoms):
        edges = np.nonzero(centers == atom)[0]
        cosines = np.clip(u[edges] @ u[edges].T, -1.0, 1.0)
        for ell in range(max_angular + 1):
            kernel = (
                (2 * ell + 1) / (4 * math.pi) * _legendre(ell, cosines) / math.sqrt(2 * ell + 1)
            )
            full = g[edges].T @ kernel @ g[edges]
            block = slice(ell * len(pair_weight), (ell + 1) * len(pair_weight))
            result[atom, block] = full[upper] * pair_weight
            full_norms[atom] += (full**2).sum()
    return result, np.sqrt(full_norms)


@pytest.mark.parametrize(
    "max_radial, max_angular, n_species, gram_per_atom",
    [(3, 4, 2, True), (4, 4, 2, False), (1, 0, 1, True), (5, 1, 3, False)],
)
def test_matches_reference(max_radial, max_angular, n_species, gram_per_atom):
    """Features equal an independent pair-sum reference (addition theorem), layout included,
    with the m contraction done per atom (small K) and per (atom, l) (larger K).

    A failure means a wrong density expansion, species/radial channel mix-up, wrong triangle
    order or weights, or a wrong 1/sqrt(2l+1) factor. Also checks n_features and that the
    feature norm equals the norm of the full (symmetric) matrices.
    """
    vectors, centers, species = _environment(seed=10, n_atoms=4, n_edges=40, n_species=n_species)
    soap = _soap(max_radial, max_angular, n_species)
    assert soap.gram_per_atom == gram_per_atom
    n_channels = n_species * max_radial
    assert soap.n_features == (max_angular + 1) * n_channels * (n_channels + 1) // 2
    features = soap(vectors, centers, species, 4)
    assert features.shape == (4, soap.n_features)
    expected, full_norms = _reference_power_spectrum(
        vectors, centers, species, 4, max_radial, max_angular, n_species
    )
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(features.numpy(), axis=1), full_norms, rtol=1e-10)
    assert np.abs(expected).max() > 1e-2  # the comparison is not between zeros


@pytest.mark.parametrize("reflection", [False, True])
def test_rotation_invariance(reflection):
    """Rotating (or rotating and reflecting) all edge vectors leaves the features unchanged.

    A failure means the m contraction is not invariant, i.e. the harmonics of one l are not
    mixed by an orthogonal matrix under O(3).
    """
    vectors, centers, species = _environment(seed=11)
    soap = _soap(max_angular=5)
    rotation = _random_orthogonal(seed=12, reflection=reflection)
    reference = soap(vectors, centers, species, 5)
    rotated = soap(vectors @ rotation.T, centers, species, 5)
    torch.testing.assert_close(rotated, reference, rtol=1e-10, atol=1e-10)


def test_permutation_invariance():
    """Shuffling the edge order does not change features; relabelling atoms permutes the rows.

    A failure means features depend on the order of the neighbour list or rows are not tied to
    the centre index.
    """
    vectors, centers, species = _environment(seed=13)
    soap = _soap()
    reference = soap(vectors, centers, species, 5)

    order = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))
    shuffled = soap(vectors[order], centers[order], species[order], 5)
    torch.testing.assert_close(shuffled, reference, rtol=1e-12, atol=1e-12)

    relabel = torch.tensor([3, 0, 4, 1, 2])  # atom i becomes atom relabel[i]
    relabelled = soap(vectors, relabel[centers], species, 5)
    # equal up to rounding: BLAS kernels may group rows differently at other offsets
    torch.testing.assert_close(relabelled[relabel], reference, rtol=1e-14, atol=1e-15)


def test_continuous_at_cutoff():
    """A neighbour just inside the cutoff barely contributes; just outside, exactly nothing.

    A failure means energies would jump when a neighbour crosses the cutoff, or pairs beyond the
    cutoff passed by an engine leak into the features or forces.
    """
    vectors, centers, species = _environment(seed=14, n_atoms=3, n_edges=20)
    soap = _soap()
    without = soap(vectors, centers, species, 3)
    direction = _unit_vectors(1, seed=15)
    results = {}
    for name, distance in [("inside", CUTOFF - 1e-6), ("outside", CUTOFF + 1e-6)]:
        extra = (direction * distance).requires_grad_(True)
        features = soap(
            torch.cat([vectors, extra]),
            torch.cat([centers, torch.tensor([1])]),
            torch.cat([species, torch.tensor([0])]),
            3,
        )
        (gradient,) = torch.autograd.grad(features.sum(), extra)
        results[name] = (features.detach(), gradient)
    assert torch.equal(results["outside"][0], without)
    assert torch.equal(results["outside"][1], torch.zeros_like(results["outside"][1]))
    torch.testing.assert_close(results["inside"][0], without, rtol=0, atol=1e-9)
    torch.testing.assert_close(results["inside"][0], results["outside"][0], rtol=0, atol=1e-9)
    assert results["inside"][1].abs().max() < 1e-4


def test_gradient_matches_finite_differences():
    """Autograd gradients w.r.t. edge vectors match central finite differences (float64).

    A failure means forces computed by autograd would not be the derivative of the energy.
    """
    vectors, centers, species = _environment(seed=16, n_atoms=3, n_edges=12)
    soap = _soap()
    weights = torch.randn(
        3, soap.n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )

    def energy(v):
        return (soap(v, centers, species, 3) * weights).sum()

    v = vectors.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(energy(v), v)
    h = 1e-6
    numeric = torch.zeros_like(vectors)
    for edge in range(vectors.shape[0]):
        for xyz in range(3):
            plus = vectors.clone()
            minus = vectors.clone()
            plus[edge, xyz] += h
            minus[edge, xyz] -= h
            numeric[edge, xyz] = (energy(plus) - energy(minus)) / (2 * h)
    torch.testing.assert_close(gradient, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "max_radial, max_angular, n_species, gram_per_atom",
    [(3, 4, 2, True), (4, 4, 2, False), (1, 0, 1, True), (5, 1, 3, False), (2, 6, 1, True)],
)
def test_written_out_gradient_equals_autograd(max_radial, max_angular, n_species, gram_per_atom):
    """``forward_saving`` gives ``forward``'s features and ``vector_gradient`` autograd's
    gradient (float64, both m contractions, l = 0 and 1 without and with direction
    derivatives, edges in the switching region and beyond the cutoff, an atom without edges,
    edges not grouped by centre, TorchScript). A failure means engines get wrong forces from
    soap_bpnn (its exported models compute them this way)."""
    vectors, centers, species = _environment(
        seed=21, n_atoms=5, n_edges=60, n_species=n_species, empty_atom=2
    )
    soap = _soap(max_radial, max_angular, n_species)
    assert soap.gram_per_atom == gram_per_atom
    assert not bool((centers[1:] >= centers[:-1]).all())
    r = vectors.norm(dim=1)
    assert bool(((r > CUTOFF - WIDTH) & (r < CUTOFF)).any()) and bool((r > CUTOFF).any())
    weights = torch.randn(
        5, soap.n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    v = vectors.clone().requires_grad_(True)
    features = soap(v, centers, species, 5)
    (expected,) = torch.autograd.grad((features * weights).sum(), v)
    for module in (soap, torch.jit.script(soap)):
        saved_features, parts = module.forward_saving(vectors, centers, species, 5)
        assert torch.equal(saved_features, features.detach())
        gradient = module.vector_gradient(parts, weights)
        torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-14)
    assert expected.abs().max() > 1e-3  # not a comparison of zeros


@pytest.mark.parametrize("max_radial", [2, 5])
def test_gradcheck_and_gradgradcheck(max_radial):
    """torch.autograd.gradcheck and gradgradcheck pass on a tiny system, with the m contraction
    per atom (2 radial functions) and per (atom, l) (5).

    A gradgradcheck failure means double backward (training on forces) gets wrong gradients.
    """
    vectors, centers, species = _environment(seed=17, n_atoms=2, n_edges=6)
    # keep every edge away from the ends of the switching region, where f'' jumps
    r = vectors.norm(dim=1, keepdim=True)
    vectors = vectors / r * torch.linspace(1.0, CUTOFF - 0.2, 6, dtype=torch.float64)[:, None]
    soap = _soap(max_radial=max_radial, max_angular=2)
    assert soap.gram_per_atom == (max_radial == 2)

    def function(v):
        return soap(v, centers, species, 2)

    v = vectors.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(function, (v,))
    assert torch.autograd.gradgradcheck(function, (v,))


def test_torchscript_matches_eager():
    """torch.jit.script(SoapPowerSpectrum) gives the eager values and differentiable outputs.

    A failure means the module cannot be exported in a TorchScript metatomic model.
    """
    vectors, centers, species = _environment(seed=18)
    soap = _soap()
    scripted = torch.jit.script(soap)
    assert scripted.n_features == soap.n_features
    v = vectors.clone().requires_grad_(True)
    eager = soap(v, centers, species, 5)
    script = scripted(v, centers, species, 5)
    torch.testing.assert_close(script, eager, rtol=1e-14, atol=1e-14)
    (g_eager,) = torch.autograd.grad(eager.sum(), v, create_graph=True)
    (g_script,) = torch.autograd.grad(script.sum(), v, create_graph=True)
    torch.testing.assert_close(g_script, g_eager, rtol=1e-12, atol=1e-12)
    # double backward through the scripted module works
    (gg,) = torch.autograd.grad(g_script.square().sum(), v)
    assert torch.isfinite(gg).all()


def test_float32():
    """float32 inputs give float32 features and gradients, close to the float64 result.

    A failure means a dtype is hard-coded somewhere (buffers, constants) or float32 loses too
    much precision.
    """
    vectors, centers, species = _environment(seed=19)
    soap = _soap()
    reference = soap(vectors, centers, species, 5)
    v = vectors.float().requires_grad_(True)
    single = soap(v, centers, species, 5)
    assert single.dtype == torch.float32
    (gradient,) = torch.autograd.grad(single.sum(), v)
    assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all()
    torch.testing.assert_close(single.double(), reference, rtol=1e-4, atol=1e-5)
    scripted = torch.jit.script(soap)
    torch.testing.assert_close(scripted(v, centers, species, 5), single, rtol=1e-6, atol=1e-6)


def test_atoms_without_edges():
    """A centre with no edges gets a zero row; a graph with no edges at all gives zeros, and one
    with no atoms an empty feature matrix.

    A failure means isolated atoms get garbage features or an empty neighbour list crashes.
    """
    vectors, centers, species = _environment(seed=20, empty_atom=2)
    soap = _soap()
    features = soap(vectors, centers, species, 5)
    assert torch.equal(features[2], torch.zeros(soap.n_features, dtype=torch.float64))
    assert features[[0, 1, 3, 4]].abs().sum(dim=1).min() > 0

    empty = soap(
        torch.zeros((0, 3), dtype=torch.float64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        3,
    )
    assert torch.equal(empty, torch.zeros((3, soap.n_features), dtype=torch.float64))
    no_atoms = soap(
        torch.zeros((0, 3), dtype=torch.float64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        0,
    )
    assert no_atoms.shape == (0, soap.n_features)


def test_edge_along_pole_has_finite_gradient():
    """An edge exactly along +-z gives finite features and gradients matching finite differences.

    A failure means a polar singularity in the harmonics leaks into the forces.
    """
    vectors = torch.tensor(
        [[0.0, 0.0, 1.5], [0.0, 0.0, -2.0], [1.0, 0.5, 0.3]], dtype=torch.float64
    )
    centers = torch.tensor([0, 0, 0])
    species = torch.tensor([0, 1, 0])
    soap = _soap()
    v = vectors.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(soap(v, centers, species, 1).sum(), v)
    assert torch.isfinite(gradient).all()
    h = 1e-6
    for xyz in range(3):
        plus = vectors.clone()
        minus = vectors.clone()
        plus[0, xyz] += h
        minus[0, xyz] -= h
        numeric = (
            soap(plus, centers, species, 1).sum() - soap(minus, centers, species, 1).sum()
        ) / (2 * h)
        assert abs(gradient[0, xyz].item() - numeric.item()) < 1e-6 * max(1.0, abs(numeric.item()))


def test_invalid_hypers():
    """Nonsensical hypers raise ValueError at construction, not garbage later."""
    with pytest.raises(ValueError):
        SoapPowerSpectrum(CUTOFF, 0.0, 3, 3, 2)
    with pytest.raises(ValueError):
        SoapPowerSpectrum(CUTOFF, CUTOFF + 1.0, 3, 3, 2)
    with pytest.raises(ValueError):
        SoapPowerSpectrum(CUTOFF, WIDTH, 0, 3, 2)
    with pytest.raises(ValueError):
        SoapPowerSpectrum(CUTOFF, WIDTH, 3, -1, 2)


def test_constants_survive_a_float32_round_trip():
    """A module made float32 and back to float64 gives the float64 features to rounding, and
    its state dict holds no constants (the checkpoint format does not depend on them).

    A failure means a constant table (harmonic coefficients) was stored as a float buffer
    and lost its digits in float32: ``mtt export --dtype float64`` of a float32 checkpoint
    would be only float32-accurate.
    """
    vectors, centers, species = _environment(seed=21)
    fresh = _soap(max_angular=4)
    round_trip = _soap(max_angular=4).float().double()
    torch.testing.assert_close(
        round_trip(vectors, centers, species, 5),
        fresh(vectors, centers, species, 5),
        rtol=1e-14,
        atol=1e-15,
    )
    assert list(fresh.state_dict()) == []
