"""``pet`` trains with the shared loop; it adds random rotations of the training batches and,
optionally, a compiled training step."""

import contextlib
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from mtt.data.graph import Graph
from mtt.errors import MttError
from mtt.training.batches import LabelBatch
from mtt.training.trainer import Trainer as SharedTrainer

from .hypers import TrainerHypers
from .model import Pet
from .modules.augmentation import random_rotations, rotate_graph, rotate_labels


class Trainer(SharedTrainer):
    __hypers__ = TrainerHypers
    # torch.compile's backend for ``compile: true`` (tests trace with "aot_eager", which
    # differentiates the same traced graph without generating code)
    compile_backend = "inductor"

    def __init__(self, hypers: TrainerHypers):
        super().__init__(hypers)
        self._compiled: Optional[Any] = None
        self._compiled_once = False

    def augment(
        self, batch: Any, labels: LabelBatch, generator: torch.Generator
    ) -> Tuple[Any, LabelBatch]:
        """One random rotation per structure, drawn from the loop's per-epoch generator (so a
        restarted run draws the same rotations)."""
        if not self.hypers.random_rotations or not isinstance(batch, Graph):
            return batch, labels
        rotations = random_rotations(len(labels.n_atoms), generator)
        return rotate_graph(batch, rotations), rotate_labels(labels, rotations)

    def predict(
        self, model, batch: Any, quantities: List[str], training: bool
    ) -> Dict[str, torch.Tensor]:
        """With ``compile``, training steps run a compiled
        :meth:`Pet.energies_and_input_gradients` (dynamic shapes: batches of other sizes
        reuse it; those it does not cover run uncompiled, see :func:`_without_recompiling`)."""
        if not (training and self.hypers.compile):
            return model.predict(batch, quantities, training=training)
        if self._compiled is None:
            self._compiled = torch.compile(
                Pet.energies_and_input_gradients, dynamic=True, backend=self.compile_backend
            )
        if self._compiled_once:
            with _without_recompiling():
                return self._compiled_predict(model, batch, quantities)
        try:
            predictions = self._compiled_predict(model, batch, quantities)
        except torch._dynamo.exc.TorchDynamoException as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise MttError(
                f"architecture.training.compile: torch.compile failed on the first training "
                f"step ({type(error).__name__}: {first_line}); set compile: false to train "
                "without it"
            ) from error
        self._compiled_once = True
        return predictions

    def _compiled_predict(
        self, model, batch: Any, quantities: List[str]
    ) -> Dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            # torch.compile looks at the .grad of its non-leaf inputs while tracing them,
            # which warns about the user's code; nothing here reads .grad
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that")
            return model.predict(batch, quantities, training=True, core=self._compiled)


def _without_recompiling() -> Any:
    """After the first compilation, a batch whose sizes the compiled step does not cover runs
    uncompiled instead of compiling again. Inductor specialises on some sizes (a product is
    decomposed for batches of at most 16 atoms; float32 sums over more than 4096 atoms,
    edges or tokens are chunked), so a last batch of two small structures, or an unusually
    large one, would each cost a compilation of minutes on a CPU for one step per epoch."""
    if not hasattr(torch.compiler, "set_stance"):  # torch < 2.6: recompiles as needed
        return contextlib.nullcontext()
    return torch.compiler.set_stance("eager_on_recompile")
