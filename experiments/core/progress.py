"""The training bar of a run bounded by optimizer steps (`trainer.max_steps`, the usual case here).

Lightning's bar counts the batches of the current epoch and titles it "Epoch 0/-2" when max_epochs is -1,
so a max-steps run shows no total of its own and no ETA. This one (Lightning's Rich bar underneath) counts
optimizer steps against `max_steps` over all epochs, so the ETA is the run's; epoch-bounded runs keep
Lightning's own behaviour.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _by_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._by_steps():
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # one bar for the whole run (a resumed run starts part-way)
            self.train_progress_bar_id = self._add_task(trainer.max_steps, "train (optimizer steps)")
            self._update(self.train_progress_bar_id, trainer.global_step)
        self.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if not self._by_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
