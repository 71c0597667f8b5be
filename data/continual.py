"""Data for continual learning of a conditional generator: the real images of one task's classes at a time.

Sources (``source=``), each loaded once into images in [-1, 1] (N, C, H, W) + int64 labels:
- ``digits``: scikit-learn's bundled 8x8 digits (offline); ``test_fraction`` of it is held out.

Validation: ``val_fraction`` of the training images (after ``train_subset``) is carved off by a seeded
permutation (``val_seed``, default the run's seed) and never trained on (not by G, D, φ or the scoring
classifier); ``self.val`` holds it, ``carve_info()`` records the sizes and the seed.
- ``fashion_mnist``: the IDX files of the Debian package ``dataset-fashion-mnist`` (``data_dir``).
- ``mnist``, ``svhn``, ``cifar10``: HF datasets by id (``ylecun/mnist``, ``ufldl-stanford/svhn`` config
  ``cropped_digits``, ``uoft-cs/cifar10``); they need the network or the HF cache.
- ``hf``: any HF dataset id (``hf_id``, ``hf_config``, ``image_column``, ``label_column``).

The task stream (``split`` or ``classes_per_task``) is validated by ``modules/continual/tasks.py``: a class
listed twice, a class missing, or a ``num_classes`` that does not match the labels is a one-line
``TaskSplitError``. ``set_task(t)`` picks the task; its training loader (``data/resumable.py``) serves
batches of ``batch_size * batches_per_step`` images (one generator step's critic batches), ordered by
(seed + task, epoch) and positioned at the trainer's step within that task, so a killed run resumes
with the same batches.
"""
from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from data.continual_sources import SOURCES
from data.images import FASHION_MNIST_DIR, _pil_to_uint8, load_digits_split, load_fashion_mnist, split_indices
from data.resumable import resumable_loader
from modules.continual.tasks import TaskSplitError, TaskStream, class_indices
from data.fixtures import hub_path  # a rehearsal's local copy of a hub dataset (docs/rehearsal.md)


def to_pm1(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def load_hf(hf_id: str, hf_config: str | None, image_column: str, label_column: str,
            cache_dir: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """train and test splits of a HF image dataset as uint8 tensors (needs the network or the HF cache)."""
    import datasets

    dsd = datasets.load_dataset(hub_path(hf_id), hf_config, cache_dir=cache_dir)
    out = {}
    for split in ("train", "test"):
        if split not in dsd:
            raise ValueError(f"dataset {hf_id!r} has no split {split!r}; it has: {', '.join(dsd)}")
        ds = dsd[split]
        out[split] = (_pil_to_uint8(ds[image_column]), torch.tensor(ds[label_column], dtype=torch.long))
    return out


class ContinualDataModule(L.LightningDataModule):
    def __init__(self, source: str = "digits", num_classes: int = 10, split: Sequence[Sequence[int]] | None = None,
                 classes_per_task: int | None = 2, batch_size: int = 64, batches_per_step: int = 1,
                 test_fraction: float = 0.2, train_subset: int | None = None, val_fraction: float = 0.1,
                 val_seed: int | None = None,
                 data_dir: str = FASHION_MNIST_DIR, hf_id: str | None = None, hf_config: str | None = None,
                 image_column: str | None = None, label_column: str | None = None, cache_dir: str | None = None,
                 num_workers: int = 0, seed: int = 0, steps_per_task: int = 0):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} is not an option; valid choices: {', '.join(SOURCES)}")
        self.source, self.num_classes = source, int(num_classes)
        self.split_cfg = [list(t) for t in split] if split is not None else None
        self.classes_per_task, self.batch_size, self.batches_per_step = classes_per_task, batch_size, batches_per_step
        self.test_fraction, self.train_subset, self.data_dir = test_fraction, train_subset, data_dir
        self.val_fraction, self.val_seed = float(val_fraction), seed if val_seed is None else int(val_seed)
        info = SOURCES[source]
        self.hf_id, self.hf_config = hf_id or info.hf_id, hf_config or info.hf_config
        self.image_column, self.label_column = image_column or info.image_column, label_column or info.label_column
        self.cache_dir, self.num_workers, self.seed = cache_dir, num_workers, seed
        self.steps_per_task = steps_per_task  # generator steps of each task (positions a task's loader)
        self.task = 0
        self.train: tuple[torch.Tensor, torch.Tensor] | None = None
        self.test: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.stream: TaskStream | None = None

    # --- loading -----------------------------------------------------------------------------
    def load_raw(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.source == "digits":
            images, labels = load_digits_split()["all"]
            train_idx, test_idx = split_indices(len(labels), [self.test_fraction], self.seed)
            return {"train": (images[train_idx], labels[train_idx]), "test": (images[test_idx], labels[test_idx])}
        if self.source == "fashion_mnist":
            return load_fashion_mnist(self.data_dir)
        if not self.hf_id:
            raise ValueError("data.source=hf needs data.hf_id")
        return load_hf(self.hf_id, self.hf_config, self.image_column, self.label_column, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        raw = self.load_raw()
        train_x, train_y = raw["train"]
        if self.train_subset:
            keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.seed))[: self.train_subset]
            train_x, train_y = train_x[keep], train_y[keep]
        self.stream = TaskStream.from_config(self.split_cfg, self.num_classes, self.classes_per_task, labels=train_y)
        # the validation carve: what selection (of a regulariser weight, a learning rate) may look at
        rest, val_idx = split_indices(len(train_y), [self.val_fraction], self.val_seed)
        self.val = (to_pm1(train_x[val_idx]), train_y[val_idx])
        train_x, train_y = train_x[rest], train_y[rest]
        self.train = (to_pm1(train_x), train_y)
        self.test = (to_pm1(raw["test"][0]), raw["test"][1])
        need = self.batch_size * self.batches_per_step
        for t, classes in enumerate(self.stream.tasks):
            have = len(class_indices(train_y, classes))
            if have < need:
                raise TaskSplitError(f"data.batch_size={self.batch_size}: task {t} (classes {list(classes)}) has "
                                     f"{have} training images, fewer than one generator step's {self.batches_per_step}"
                                     f" critic batches ({need}); lower data.batch_size")

    def carve_info(self) -> dict[str, float | int]:
        """The validation carve as recorded in results.json."""
        return {"data/n_train": len(self.train[1]), "data/n_val": len(self.val[1]), "data/n_test": len(self.test[1]),
                "data/val_fraction": self.val_fraction, "data/val_seed": self.val_seed}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])

    # --- tasks -------------------------------------------------------------------------------
    def set_task(self, task: int) -> None:
        self.task = int(task)

    def task_data(self, task: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = {"train": self.train, "val": self.val, "test": self.test}[split]
        idx = class_indices(labels, self.stream[task])
        return images[idx], labels[idx]

    def train_dataloader(self) -> DataLoader:
        images, labels = self.task_data(self.task)
        return resumable_loader(TensorDataset(images, labels), self.batch_size * self.batches_per_step,
                                seed=self.seed + 1000 * self.task, trainer=self.trainer, drop_last=True,
                                step_offset=self.task * self.steps_per_task, num_workers=self.num_workers)

