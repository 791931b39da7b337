"""Upgrade steps of ``sevenn`` checkpoints, one per version bump.

``MODEL_UPGRADES[v]`` turns a model checkpoint of version ``v`` into version ``v + 1``; the same
for ``TRAINER_UPGRADES``. Version 1 is the first: nothing to upgrade yet.
"""

from typing import Callable, Dict

MODEL_UPGRADES: Dict[int, Callable[[dict], dict]] = {}
TRAINER_UPGRADES: Dict[int, Callable[[dict], dict]] = {}
