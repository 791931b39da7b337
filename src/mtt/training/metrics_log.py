"""TensorBoard event files with the metrics of ``train.csv``, when TensorBoard is installed.

With ``tensorboard`` installed (``pip install tensorboard``), every epoch's row of
``train.csv`` (learning rate, losses, RMSE and MAE; the column names are the tags, the epoch is
the step) also goes to
``<run_dir>/tensorboard/``, and ``tensorboard --logdir outputs`` compares runs live. Without the
package nothing is written, and one info line says how to get it.
"""

import importlib.util
import logging
import os
import weakref
from typing import Any, Dict, Optional

LOGGER = logging.getLogger("mtt")


class MetricsLog:
    """Writes rows of metrics to TensorBoard event files, one file per (re)start of a run."""

    def __init__(self):
        self.available = importlib.util.find_spec("tensorboard") is not None
        self.writer: Optional[Any] = None
        self.run_dir: Optional[str] = None
        self.told = False

    def write(self, run_dir: str, row: Dict[str, float], last: bool = False) -> None:
        """Add ``row`` at step ``row["epoch"]``; the file is closed after the ``last`` epoch."""
        if not self.available:
            if not self.told:
                LOGGER.info("no TensorBoard logs: install them with 'pip install tensorboard'")
                self.told = True
            return
        step = int(row["epoch"])
        if self.writer is None or run_dir != self.run_dir:
            self._open(run_dir, step)
        for tag, value in row.items():
            if tag != "epoch":
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # readable now, even if the run is killed later
        if last:
            self.close()

    def _open(self, run_dir: str, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        # a restart hides what the interrupted run logged after its checkpoint
        purge = first_step if first_step > 1 else None
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=purge)
        self.run_dir = run_dir
        # closed too if training fails, when the trainer goes (or at exit)
        weakref.finalize(self, self.writer.close)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
