"""The learning rate in the progress bar, next to the objective's `train/loss` and Throughput's tokens/s."""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor


class LearningRateMonitor(LightningLearningRateMonitor):
    """Lightning's `LearningRateMonitor` (same arguments; logs `lr-<Optimizer>` to the logger), plus the
    current learning rate of the first parameter group in the progress bar as `lr`.

    Args:
        logging_interval: `step` or `epoch`; None logs at each scheduler's own interval.
        log_momentum: also log the momentum (or Adam's beta1).
        log_weight_decay: also log the weight decay.
        prog_bar: show `lr` in the progress bar (updated every batch).
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] | None = None,
        log_momentum: bool = False,
        log_weight_decay: bool = False,
        prog_bar: bool = True,
    ):
        super().__init__(logging_interval, log_momentum, log_weight_decay)
        self.prog_bar = prog_bar

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.prog_bar and trainer.optimizers:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            pl_module.log("lr", lr, prog_bar=True, logger=False, batch_size=1)
