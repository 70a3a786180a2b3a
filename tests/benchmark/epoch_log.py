"""A Lightning callback for cluster tests: logs each epoch's start and makes epochs last long enough
to lose a node in the middle of a fit."""

import os
import time
from pathlib import Path

from lightning.pytorch import Callback


class EpochLog(Callback):
    """Append ``<epoch> <pid> <time>`` to ``<default_root_dir>/epochs.log`` when an epoch starts (the
    previous epoch's ``last.ckpt`` is saved by then), then sleep ``sleep_s`` seconds.

    Args:
        sleep_s: Seconds each epoch takes at least.
    """

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.sleep_s = sleep_s

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        with open(Path(trainer.default_root_dir) / "epochs.log", "a") as handle:
            handle.write(f"{trainer.current_epoch} {os.getpid()} {time.time():.3f}\n")
        time.sleep(self.sleep_s)
