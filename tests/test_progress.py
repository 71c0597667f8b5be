"""The training bar counts optimizer steps against max_steps across epochs (Lightning's shows 'Epoch 0/-2')."""
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from experiments.core.progress import StepProgressBar


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_bar_reaches_max_steps_over_several_epochs_with_gradient_accumulation(tmp_path, monkeypatch):
    bar = StepProgressBar()
    loader = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)  # 3 batches an epoch
    trainer = pl.Trainer(max_steps=5, accumulate_grad_batches=2, callbacks=[bar], logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(Tiny(), loader)
    assert trainer.current_epoch >= 3  # several epochs were needed for 5 steps of 2 batches
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.total, task.completed, task.description) == (5, 5, "train (optimizer steps)")
