"""Energy uncertainties from the last layer (LLPR: last-layer prediction rigidity).

An energy model ends with a linear map ``E = w . F`` of per-structure features ``F`` (the sum
over atoms of the inputs of the output layer). Treating ``w`` as a Bayesian linear model fitted
on the training structures gives the variance ``sigma^2 = alpha^2 F^T (sum_s F_s F_s^T +
lambda I)^-1 F`` of a prediction (Bigi et al., arXiv:2403.02251): large where the features
are unlike anything in the training set. ``lambda`` and ``alpha^2`` are chosen on the
validation set (the Gaussian likelihood of its actual errors), so the uncertainty is
calibrated rather than only ranked. Per-atom uncertainties use each atom's own features: they
point at the atoms responsible (metatomic's ASE calculator warns when one exceeds a threshold).

The state is a whitening matrix ``W`` with ``W^T W = C^-1`` (from the Cholesky factor of ``C``),
so that ``F^T C^-1 F = |W F|^2`` is a sum of squares, accurate in float32 too, and one
``alpha^2`` per energy target. It lives in non-persistent
buffers: it does not change the checkpointed weights' format, travels in checkpoints under its
own key, and is serialised in the exported TorchScript model.
"""

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from metatensor.torch import Labels, TensorBlock, TensorMap

from .errors import MttError
from .outputs import selected_atom_indices

LOGGER = logging.getLogger("mtt")

# candidate regularisers, relative to the mean diagonal of the feature covariance
RELATIVE_LAMBDAS = [10.0**k for k in range(-10, 1)]


class LastLayerUncertainty(torch.nn.Module):
    """LLPR state of a model: ``whitening`` ``[D, D]`` and ``alpha2`` ``[n_targets]``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("whitening", torch.zeros(0, 0, dtype=torch.float64), persistent=False)
        self.register_buffer("alpha2", torch.zeros(0, dtype=torch.float64), persistent=False)

    def calibrated(self) -> bool:
        return self.alpha2.numel() > 0

    def variances(self, features: torch.Tensor) -> torch.Tensor:
        """``F^T C^-1 F`` of each row of ``features`` ``[K, D]``, before ``alpha^2``."""
        projected = features @ self.whitening.to(features.dtype).T
        return (projected * projected).sum(dim=1)

    def tensormap(
        self,
        features: torch.Tensor,
        target: int,
        system_index: torch.Tensor,
        n_atoms: torch.Tensor,
        per_atom: bool,
        selected_atoms: Optional[Labels],
    ) -> TensorMap:
        """Standard deviations of target ``target``: per selected atom, or per system from
        the sum of the selected atoms' features."""
        device = features.device
        index = selected_atom_indices(n_atoms, selected_atoms)
        alpha2 = self.alpha2[target].to(features.dtype)
        if per_atom:
            offsets = torch.cumsum(n_atoms, 0) - n_atoms
            systems = system_index[index]
            values = torch.sqrt(alpha2 * self.variances(features[index]))
            samples = Labels(
                ["system", "atom"],
                torch.stack([systems, index - offsets[systems]], dim=1).to(torch.int32),
            )
        else:
            n_systems = n_atoms.shape[0]
            summed = torch.zeros(
                n_systems, features.shape[1], dtype=features.dtype, device=device
            ).index_add(0, system_index[index], features[index])
            values = torch.sqrt(alpha2 * self.variances(summed))
            samples = Labels(
                ["system"], torch.arange(n_systems, device=device, dtype=torch.int32).reshape(-1, 1)
            )
        properties = Labels(["energy"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        block = TensorBlock(values.reshape(-1, 1), samples, [], properties)
        keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        return TensorMap(keys, [block])

    def get_state(self) -> Optional[Dict[str, torch.Tensor]]:
        if not self.calibrated():
            return None
        return {"whitening": self.whitening.detach().cpu(), "alpha2": self.alpha2.detach().cpu()}

    def set_state(self, state: Optional[Dict[str, Any]], n_targets: int) -> None:
        if state is None:
            self.reset()
            return
        whitening = torch.as_tensor(state["whitening"])
        alpha2 = torch.as_tensor(state["alpha2"])
        square = whitening.ndim == 2 and whitening.shape[0] == whitening.shape[1]
        if not square or alpha2.shape != (n_targets,):
            raise ValueError("the uncertainty calibration does not match the model")
        dtype, device = self.whitening.dtype, self.whitening.device
        self.whitening = whitening.to(dtype=dtype, device=device)
        self.alpha2 = alpha2.to(dtype=dtype, device=device)

    def reset(self) -> None:
        """Forget the calibration (the weights it was made for changed)."""
        self.whitening = torch.zeros(0, 0, dtype=self.whitening.dtype, device=self.whitening.device)
        self.alpha2 = torch.zeros(0, dtype=self.alpha2.dtype, device=self.alpha2.device)


def uncertainty_name(target: str) -> str:
    """``energy`` -> ``energy_uncertainty``, ``energy/pbe0`` -> ``energy_uncertainty/pbe0``."""
    base, _, variant = target.partition("/")
    return f"{base}_uncertainty/{variant}" if variant else f"{base}_uncertainty"


def _batches(model, dataset, batch_size: int = 16):
    """``(items, per-atom last-layer features [A, D], per-atom energies [A, T], system index
    [A])`` of consecutive batches of ``dataset``, in float64 on the CPU."""
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        graph = model.collate_fn([model.atoms_to_data(atoms) for atoms, _ in items])
        system_index = graph.system_index
        graph = type(graph)(*[t.to(model.baseline.device) for t in graph])
        with torch.no_grad():
            species = model.type_to_index[graph.types]
            per_atom = model.last_layer_features(graph, species).to(torch.float64).cpu()
            energies = model.atomic_energies(graph).to(torch.float64).cpu()
        yield items, per_atom, energies, system_index


def _structure_features(model, dataset) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-structure summed last-layer features ``[S, D]``, predicted energies ``[S, T]`` and
    reference energies ``[S, T]`` (NaN where a frame lacks the label)."""
    features, predicted, reference = [], [], []
    for items, per_atom, energies, system_index in _batches(model, dataset):
        n_systems = len(items)
        summed = torch.zeros(n_systems, per_atom.shape[1], dtype=torch.float64)
        features.append(summed.index_add(0, system_index, per_atom).numpy())
        totals = torch.zeros(n_systems, energies.shape[1], dtype=torch.float64)
        predicted.append(totals.index_add(0, system_index, energies).numpy())
        for _, labels in items:
            reference.append(
                [
                    float(np.asarray(labels[name]).reshape(-1)[0]) if name in labels else np.nan
                    for name in model.target_names
                ]
            )
    return np.concatenate(features), np.concatenate(predicted), np.asarray(reference)


def atom_uncertainties(model, dataset) -> np.ndarray:
    """Per-atom standard deviations ``[A, T]`` of a calibrated model on ``dataset``, as the
    exported model gives them to an engine (each atom's own features)."""
    whitening = model.uncertainty.whitening.detach().cpu().double().numpy()
    alpha2 = model.uncertainty.alpha2.detach().cpu().double().numpy()
    q = [
        _quadratic_forms(per_atom.numpy(), whitening)
        for _, per_atom, _, _ in _batches(model, dataset)
    ]
    return np.sqrt(np.concatenate(q)[:, None] * alpha2[None, :])


def _quadratic_forms(features: np.ndarray, whitening: np.ndarray) -> np.ndarray:
    """``F^T C^-1 F = |W F|^2`` per row."""
    return np.clip(np.sum((features @ whitening.T) ** 2, axis=1), 1e-300, None)


def _whitening(covariance: np.ndarray) -> Optional[np.ndarray]:
    """``W = L^-1`` for the Cholesky factor ``C = L L^T``, so ``W^T W = C^-1``."""
    try:
        factor = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        return None
    identity = torch.eye(covariance.shape[0], dtype=torch.float64)
    inverse = torch.linalg.solve_triangular(torch.from_numpy(factor), identity, upper=False)
    return inverse.numpy()


def _calibrate(q: np.ndarray, errors: np.ndarray) -> Tuple[float, float]:
    """``alpha^2`` maximising the Gaussian likelihood of ``errors`` with variances
    ``alpha^2 q``, and the mean negative log-likelihood there."""
    alpha2 = float(np.mean(errors**2 / q))
    alpha2 = max(alpha2, 1e-300)
    nll = 0.5 * float(np.mean(np.log(2 * math.pi * alpha2 * q) + errors**2 / (alpha2 * q)))
    return alpha2, nll


#: Fewest validation structures that calibrate uncertainties
MIN_CALIBRATION = 5


def fit_uncertainty(model, train_set, calibration_set: Optional[Any]) -> Dict[str, Any]:
    """Fit ``model.uncertainty`` from the training structures' features; choose the
    regulariser and ``alpha^2`` per target on ``calibration_set`` (the validation set; the
    training set when there is none, which underestimates errors: a warning says so)."""
    if not model.target_names:
        raise MttError("uncertainties are for energies, and this model predicts none")
    was_training = model.training
    model.eval()
    try:
        train_features, _, train_reference = _structure_features(model, train_set)
        # structures without any energy label tell nothing of the energies' errors: in the
        # covariance they made the model confident where it had no energy data
        train_features = train_features[~np.isnan(train_reference).all(axis=1)]
        if calibration_set is None or len(calibration_set) == 0:
            LOGGER.warning(
                "no validation set: energy uncertainties are calibrated on the training set, "
                "where errors are smaller than on new structures; add a validation_set"
            )
            calibration_set = train_set
        elif len(calibration_set) < MIN_CALIBRATION:
            # one structure fits every regulariser equally: the choice is arbitrary (per-atom
            # uncertainties of 1e4 eV were seen), so the training set calibrates instead
            LOGGER.warning(
                "the validation set has %d structure(s), too few to calibrate energy "
                "uncertainties (at least %d): calibrated on the training set, where errors "
                "are smaller than on new structures; give a larger validation_set",
                len(calibration_set),
                MIN_CALIBRATION,
            )
            calibration_set = train_set
        features, predicted, reference = _structure_features(model, calibration_set)
    finally:
        model.train(was_training)
    covariance = train_features.T @ train_features
    scale = max(float(np.mean(np.diag(covariance))), 1e-300)
    best: Optional[Tuple[float, np.ndarray, List[float]]] = None
    for relative in RELATIVE_LAMBDAS:
        regularised = covariance + relative * scale * np.eye(covariance.shape[0])
        whitening = _whitening(regularised)
        if whitening is None:
            continue
        q = _quadratic_forms(features, whitening)
        total, alphas = 0.0, []
        for t in range(len(model.target_names)):
            labelled = ~np.isnan(reference[:, t])
            if not labelled.any():  # (said once, after the search)
                alphas.append(1.0)
                continue
            alpha2, nll = _calibrate(q[labelled], predicted[labelled, t] - reference[labelled, t])
            alphas.append(alpha2)
            total += nll
        if np.isfinite(total) and (best is None or total < best[0]):
            best = (total, whitening, alphas)
    if best is None:
        raise MttError("could not calibrate energy uncertainties: the features are degenerate")
    _, whitening, alphas = best
    for t, name in enumerate(model.target_names):
        if np.isnan(reference[:, t]).all():
            LOGGER.warning(
                "%s: no %r labels to calibrate it with, so it is uncalibrated (a scale of 1 in "
                "the target's unit): do not trust it, or add such labels to the validation set",
                uncertainty_name(name),
                name,
            )
    model.uncertainty.set_state(
        {"whitening": torch.from_numpy(whitening), "alpha2": torch.tensor(alphas)},
        len(model.target_names),
    )
    return {"alpha2": alphas, "n_features": int(whitening.shape[0])}


def calibration_report(model, dataset) -> Dict[str, Dict[str, float]]:
    """Per target: RMS predicted uncertainty and RMS actual error on ``dataset`` (they agree
    for a calibrated model), and how often the error is within
    two standard deviations (about 95% for Gaussian errors)."""
    features, predicted, reference = _structure_features(model, dataset)
    whitening = model.uncertainty.whitening.detach().cpu().double().numpy()
    q = _quadratic_forms(features, whitening)
    report = {}
    for t, name in enumerate(model.target_names):
        labelled = ~np.isnan(reference[:, t])
        if not labelled.any():
            continue
        sigma = np.sqrt(float(model.uncertainty.alpha2[t]) * q[labelled])
        errors = np.abs(predicted[labelled, t] - reference[labelled, t])
        report[name] = {
            "rms_uncertainty": float(np.sqrt(np.mean(sigma**2))),
            "rms_error": float(np.sqrt(np.mean(errors**2))),
            "within_2_sigma": float(np.mean(errors <= 2 * sigma)),
        }
    return report


def structures_features(model, frames: Sequence) -> np.ndarray:
    """Summed last-layer features of unlabelled structures (for tests and analysis)."""
    return _structure_features(model, [(atoms, {}) for atoms in frames])[0]
