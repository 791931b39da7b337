"""A per-batch progress bar with loss and ETA, only when attached to a terminal.

In batch jobs and CI (no terminal) nothing is drawn: the per-epoch log lines are the record.
"""

import sys
import time


class ProgressBar:
    def __init__(self, epoch: int, num_epochs: int, total: int, enabled: bool):
        self.epoch, self.num_epochs, self.total = epoch, num_epochs, total
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.start = time.monotonic()

    def update(self, structures: int, loss: float) -> None:
        self.done += structures
        if not self.enabled:
            return
        fraction = self.done / max(self.total, 1)
        elapsed = time.monotonic() - self.start
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else 0.0
        width = 30
        bar = "=" * int(width * fraction) + ">" + " " * (width - int(width * fraction))
        sys.stderr.write(
            f"\repoch {self.epoch}/{self.num_epochs} [{bar[:width]}] {100 * fraction:3.0f}% "
            f"loss {loss:.4g} ETA {eta:4.0f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()
