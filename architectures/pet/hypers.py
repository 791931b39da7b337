"""Hypers of ``pet``: the single source of their defaults, types and documentation."""

from dataclasses import dataclass
from typing import List, Tuple

from mtt.hypers import cutoff_problems, minimum_problems
from mtt.training.hypers import TrainingHypers


@dataclass
class ModelHypers:
    """``architecture.model`` for ``pet``."""

    # metatrain's pet hypers that this pet does without (a hint, not "did you mean")
    __metatrain__ = {
        "d_head": "the output heads' hidden width is d_pet here; remove it",
        "d_node": "no separate node width here: the features are d_pet wide; remove it",
    }

    cutoff: float = 4.5
    """Radius of each atom's neighbourhood, in the length unit of the data (Å by default).
    Engines must provide neighbours up to ``cutoff * num_gnn_layers`` (the declared
    interaction range), since messages travel one cutoff per layer."""
    cutoff_width: float = 0.5
    """Width of the smooth switch that brings a neighbour's attention weight to zero at the
    cutoff (energies and forces stay continuous when neighbours come and go)."""
    d_pet: int = 64
    """Width of the tokens (the transformers' model dimension)."""
    num_heads: int = 4
    """Attention heads; must divide ``d_pet``."""
    num_attention_layers: int = 2
    """Transformer blocks (attention + feed-forward) in each message-passing layer."""
    num_gnn_layers: int = 2
    """Message-passing layers; each feeds the output token of edge ``j -> i`` into the input
    token of edge ``i -> j`` of the next, and contributes its own energy head."""
    d_feedforward: int = 128
    """Hidden width of the feed-forward network of each transformer block."""
    num_radial: int = 32
    """Gaussians of each edge's length (centres evenly spaced on ``[0, cutoff]``, width their
    spacing), fed with the edge vector to its token. Narrow Gaussians make the tokens
    sensitive to small displacements, which training on forces needs from the start (with 8
    on ethanol, forces did not start to learn within 20 epochs)."""
    direct_forces: bool = False
    """Add direct (non-conservative) heads for forces and stress: weights of the edge vectors
    read from the last layer's edge tokens, trained against the same force and stress labels
    as the exact gradients (loss quantities ``energy/direct_forces`` and
    ``energy/direct_stress``, weights in ``loss.weights``). Exported as the
    ``non_conservative_force`` and ``non_conservative_stress`` outputs (the latter for targets
    with stress labels); MD with them skips the backward pass but does not conserve energy."""

    def validate(self) -> List[Tuple[str, str]]:
        positive = (
            "d_pet",
            "num_heads",
            "num_attention_layers",
            "num_gnn_layers",
            "d_feedforward",
            "num_radial",
        )
        problems = cutoff_problems(self)
        problems += minimum_problems(self, positive, 1)
        if self.num_heads >= 1 and self.d_pet % self.num_heads != 0:
            problems.append(
                ("num_heads", f"must divide d_pet ({self.d_pet}), got {self.num_heads}")
            )
        return problems


@dataclass
class TrainerHypers(TrainingHypers):
    """``architecture.training`` for ``pet``: the shared training hypers, and augmentation."""

    random_rotations: bool = True
    """Rotate each training structure (positions, cell, force and stress labels) by a fresh
    random rotation at every step. PET is not rotation invariant by construction; this is how
    it learns to be (nearly) invariant. Validation data is never rotated."""
    compile: bool = False
    """Compile the model's part of each training step (energies and their gradient) with
    ``torch.compile``. On a 2-core CPU with pet's benchmark sizes that part of a step then
    took 16-23 % less time (on the same batches: benchmarks/compile_ab.py), after compiling
    for 3 to 5 minutes before the first step (torch caches the result, so a later run of the
    same model starts sooner): worth it for long runs only. The step is compiled once, for
    the first batch's kind of sizes; a batch it does not cover (torch specialises, e.g., on
    batches of at most 16 atoms) runs uncompiled rather than compiling again. Needs a C++
    compiler on the CPU (Triton on GPUs). The trained model is the same function either way,
    only rounding differs; validation and exported models are not compiled."""
