"""The two interfaces every architecture implements (after metatrain's abstract classes).

A :class:`ModelInterface` is a ``torch.nn.Module`` whose ``forward`` takes metatomic ``System``
objects and returns metatensor ``TensorMap`` objects, exactly as the exported model will. It also
says, after MatterTune's backbone idea, how an ``ase.Atoms`` becomes its native training data
(``atoms_to_data``), how such data is batched (``collate_fn``) and what it predicts for a batch
(``predict``), so that wrapped foundation models may keep their own graph format in training.

A :class:`TrainerInterface` trains a model and saves/loads checkpoints; the shared
:class:`mtt.training.Trainer` implements it once for every architecture.
"""

from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence

import ase
import torch
from metatensor.torch import Labels, TensorMap
from metatomic.torch import AtomisticModel, ModelMetadata, ModelOutput, System

from .data.targets import DatasetInfo

CheckpointContext = Literal["restart", "finetune", "export"]


class ModelInterface(torch.nn.Module, metaclass=ABCMeta):
    """Abstract base class of every model.

    Class attributes an architecture sets:

    - ``__checkpoint_version__``: version of the model part of checkpoints; bump it with an
      upgrade step in the architecture's ``checkpoints.py`` whenever the format changes.
    - ``__supported_devices__``: device types in order of preference, e.g. ``["cuda", "cpu"]``.
    - ``__supported_dtypes__``: dtypes in order of preference.
    - ``__default_metadata__``: ``ModelMetadata`` stored in every exported model (references).
    - ``__hypers__``: the dataclass of the model hypers (``architecture.model`` in the options).
    """

    __checkpoint_version__: int
    __supported_devices__: List[str]
    __supported_dtypes__: List[torch.dtype]
    __default_metadata__: ModelMetadata
    __hypers__: type

    def __init__(self, hypers: Any, dataset_info: DatasetInfo, metadata: ModelMetadata):
        super().__init__()
        self.hypers = hypers
        self.dataset_info = dataset_info
        self.metadata = metadata

    @abstractmethod
    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        """Compute the requested ``outputs`` for ``systems`` (only ``selected_atoms``)."""

    @abstractmethod
    def supported_outputs(self) -> Dict[str, ModelOutput]:
        """Outputs this model can compute, as declared in its exported capabilities."""

    @abstractmethod
    def restart(self, dataset_info: DatasetInfo) -> "ModelInterface":
        """This model, adapted to train on ``dataset_info`` (fine-tuning, transfer)."""

    @classmethod
    @abstractmethod
    def load_checkpoint(
        cls, checkpoint: Dict[str, Any], context: CheckpointContext
    ) -> "ModelInterface":
        """Create a model from a checkpoint; ``context`` picks the weights (best for export
        and fine-tuning, latest to restart)."""

    @abstractmethod
    def get_checkpoint(self) -> Dict[str, Any]:
        """Everything ``load_checkpoint`` needs, as plain Python objects and tensors."""

    @classmethod
    @abstractmethod
    def upgrade_checkpoint(cls, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """Upgrade an older checkpoint to ``__checkpoint_version__``."""

    @abstractmethod
    def export(
        self, metadata: Optional[ModelMetadata] = None, second_derivatives: bool = False
    ) -> AtomisticModel:
        """Wrap a copy of this model as a metatomic ``AtomisticModel``; with
        ``second_derivatives``, autograd must give exact second derivatives of its energies
        too (see :mod:`mtt.lean_gradients`)."""

    # MatterTune's backbone: native training data, batching and predictions
    @abstractmethod
    def atoms_to_data(self, atoms: ase.Atoms) -> Any:
        """Turn one structure into this model's native data, once, before training."""

    @abstractmethod
    def collate_fn(self, data: Sequence[Any]) -> Any:
        """Batch native data."""

    @abstractmethod
    def predict(self, batch: Any, quantities: List[str], training: bool) -> Dict[str, torch.Tensor]:
        """Predictions for ``quantities`` (e.g. ``energy``, ``energy/forces``,
        ``energy/stress``) on a batch: energies ``[S]``, forces ``[N, 3]``, stress
        ``[S, 3, 3]``, in the units of the targets. ``training`` keeps the graph of gradients
        so that losses on forces can be differentiated."""


class TrainerInterface(metaclass=ABCMeta):
    """Abstract base class of the object that trains a model."""

    __checkpoint_version__: int

    def __init__(self, hypers: Any):
        self.hypers = hypers

    @abstractmethod
    def train(
        self,
        model: ModelInterface,
        dtype: torch.dtype,
        devices: List[torch.device],
        train_datasets: List[Any],
        val_datasets: List[Any],
        checkpoint_dir: str,
    ) -> None:
        """Train ``model`` on ``train_datasets``, validating on ``val_datasets``."""

    @abstractmethod
    def save_checkpoint(self, model: ModelInterface, path: "str | Path") -> None:
        """Save model and trainer state to ``path`` (atomically)."""

    @classmethod
    @abstractmethod
    def upgrade_checkpoint(cls, checkpoint: Dict[str, Any]) -> Dict[str, Any]:
        """Upgrade the trainer part of an older checkpoint."""

    @classmethod
    @abstractmethod
    def load_checkpoint(
        cls, checkpoint: Dict[str, Any], hypers: Any, context: CheckpointContext
    ) -> "TrainerInterface":
        """A trainer that continues (``restart``) or starts fresh from (``finetune``)
        ``checkpoint``."""
