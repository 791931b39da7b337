"""Upgrade steps of ``soap_bpnn`` checkpoints, one per version bump.

``MODEL_UPGRADES[v]`` turns a model checkpoint of version ``v`` into version ``v + 1``; the same
for ``TRAINER_UPGRADES``. When the format changes, bump ``__checkpoint_version__``, add the step
here, and add a golden checkpoint of the old version to ``tests/checkpoints`` that must still
load (``model-v1.ckpt`` is one).
"""

from typing import Callable, Dict

import torch


def _v1_to_v2(checkpoint: dict) -> dict:
    """Version 2 added generic targets: the (empty, for energy-only models) normalisation
    buffers of their heads."""
    for key in ("model_state_dict", "best_model_state_dict"):
        state = checkpoint.get(key)
        if state is not None:
            state = dict(state)
            dtype = state["scale"].dtype
            state.setdefault("generic_shift", torch.zeros(0, dtype=dtype))
            state.setdefault("generic_scale", torch.ones(0, dtype=dtype))
            checkpoint[key] = state
    return checkpoint


MODEL_UPGRADES: Dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}
TRAINER_UPGRADES: Dict[int, Callable[[dict], dict]] = {}
