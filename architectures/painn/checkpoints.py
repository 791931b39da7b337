"""Upgrade steps of ``painn`` checkpoints, one per version bump.

``MODEL_UPGRADES[v]`` turns a model checkpoint of version ``v`` into version ``v + 1``; the same
for ``TRAINER_UPGRADES``. Version 1 is the first: nothing to upgrade yet. When the format
changes, bump ``__checkpoint_version__``, add the step here, and add a golden checkpoint of the
old version to ``tests/checkpoints`` that must still load (``model-v1.ckpt`` is one).
"""

from typing import Callable, Dict

MODEL_UPGRADES: Dict[int, Callable[[dict], dict]] = {}
TRAINER_UPGRADES: Dict[int, Callable[[dict], dict]] = {}
