"""A 2-process DDP fit of a tiny linear regression through the framework's Trainer (``trainer=ddp_cpu``,
experiments/core/runtime.py: build_trainer); each rank saves its final weights. Run as a script:
``python tests/ddp_fit.py <out folder>`` (tests/test_ddp.py)."""
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
STEPS, LR, PER_RANK = 4, 0.1, 2


def data() -> TensorDataset:
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3)


class Regression(pl.LightningModule):
    def __init__(self, out: Path):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(3, 1)
        self.out = out

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)

    def on_train_end(self):
        torch.save({k: v.detach().clone() for k, v in self.state_dict().items()},
                   self.out / f"rank{self.global_rank}.pt")


def main(out: Path) -> None:
    from hydra import compose, initialize_config_dir

    from experiments.core.runtime import build_trainer

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["trainer=ddp_cpu", f"trainer.max_steps={STEPS}", "logger=none",
                                           "checkpoint.every_n_steps=2",
                                           "trainer.gradient_clip_val=null"])  # the reference does not clip
    trainer = build_trainer(cfg, out)
    # shuffle=False: Lightning's DistributedSampler deals rank r the samples r, r+2, ...
    trainer.fit(Regression(out), DataLoader(data(), batch_size=PER_RANK, shuffle=False))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(Path(sys.argv[1]))
