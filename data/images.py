"""Image classification data: scikit-learn digits, Fashion-MNIST (Debian files), HF datasets.

Every source is loaded once into uint8 tensors (N, C, H, W) + int64 labels, split
deterministically by ``seed``, and served by a dataset that scales, resizes and normalises a
whole batch at once (``__getitems__``), so per-sample Python overhead stays small on CPU.

Sources (``source=``):
- ``digits``: scikit-learn ``load_digits`` (1797 8x8 grey images, 10 classes, bundled with
  scikit-learn, offline). No official test split: ``test_fraction`` of it is held out.
- ``fashion_mnist``: the IDX ``.gz`` files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``; 60k train / 10k test 28x28 grey images, 10 classes).
- ``cifar10`` / ``cifar100``: HF ``uoft-cs/cifar10`` (``img``, ``label``) and ``uoft-cs/cifar100``
  (``img``, ``fine_label``; set ``label_column=coarse_label`` for the 20 super-classes).
- ``hf``: any HF dataset id (or a local folder ``datasets.load_dataset`` reads, or a
  ``save_to_disk`` folder) given as ``hf_id`` with ``image_column`` / ``label_column``.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from data.fixtures import hub_path  # a rehearsal's local copy of a hub dataset (docs/rehearsal.md)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class SourceInfo:
    """What a named source is: its HF id and columns (HF sources), and its image shape/classes."""

    hf_id: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    shape: tuple[int, int, int] | None = None  # (C, H, W), None: known after setup
    num_classes: int | None = None


SOURCES = {
    "digits": SourceInfo(shape=(1, 8, 8), num_classes=10),
    "fashion_mnist": SourceInfo(shape=(1, 28, 28), num_classes=10),
    "cifar10": SourceInfo("uoft-cs/cifar10", "img", "label", (3, 32, 32), 10),
    "cifar100": SourceInfo("uoft-cs/cifar100", "img", "fine_label", (3, 32, 32), 100),
    "hf": SourceInfo(),
}

Split = tuple[torch.Tensor, torch.Tensor]  # (uint8 images (N, C, H, W), int64 labels (N,))


# ---------------------------------------------------------------------------------------------
# Loaders: each returns {"train": Split, "test": Split} or {"all": Split}.

def load_digits_split() -> dict[str, Split]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # pixel values are 0..16: rescale to the 0..255 range every other source uses
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return {"all": (torch.from_numpy(images), torch.from_numpy(digits.target).long())}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic (0, 0, dtype=0x08 ubyte, ndim), big-endian dims, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data_dir: str | Path = FASHION_MNIST_DIR) -> dict[str, Split]:
    data_dir = Path(data_dir)
    out = {}
    for split, (images_file, labels_file) in FASHION_MNIST_FILES.items():
        for name in (images_file, labels_file):
            if not (data_dir / name).is_file():
                raise FileNotFoundError(f"Fashion-MNIST file {data_dir / name} not found: install it with "
                                        f"`apt-get install dataset-fashion-mnist` or set data.data_dir")
        images = read_idx(data_dir / images_file)[:, None]  # (N, 1, 28, 28)
        labels = read_idx(data_dir / labels_file).astype(np.int64)
        out[split] = (torch.from_numpy(images.copy()), torch.from_numpy(labels))
    return out


def load_hf_images(hf_id: str, image_column: str, label_column: str,
                   splits: Sequence[str] = ("train", "test"), cache_dir: str | None = None) -> dict[str, Split]:
    """A HF dataset by id via ``datasets.load_dataset`` (or ``load_from_disk`` for a saved folder)."""
    import datasets

    local = Path(hf_id)
    if (local / "dataset_dict.json").is_file():
        dsd = datasets.load_from_disk(str(local))
    else:
        dsd = datasets.load_dataset(hub_path(hf_id), cache_dir=cache_dir)
    out = {}
    for split in splits:
        if split not in dsd:
            raise ValueError(f"dataset {hf_id!r} has no split {split!r}; it has: {', '.join(dsd)}")
        ds = dsd[split]
        for col in (image_column, label_column):
            if col not in ds.column_names:
                raise ValueError(f"dataset {hf_id!r} has no column {col!r}; columns: {', '.join(ds.column_names)}")
        out[split] = (_pil_to_uint8(ds[image_column]), torch.tensor(ds[label_column], dtype=torch.long))
    return out


def _pil_to_uint8(images: Sequence) -> torch.Tensor:
    """PIL images -> (N, C, H, W) uint8; grey stays 1 channel, anything else becomes RGB."""
    mode = "L" if images[0].mode in ("L", "1", "I", "I;16") else "RGB"
    arrays = np.stack([np.asarray(img.convert(mode)) for img in images])  # (N, H, W[, 3])
    arrays = arrays[:, None] if mode == "L" else arrays.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arrays))


# ---------------------------------------------------------------------------------------------
# Dataset and splits.

class ImageTensorDataset(Dataset):
    """uint8 images served as normalised float: x = (img / 255 - mean) / std, resized if asked."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float], image_size: int | None = None):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std, self.labels[index]

    def __getitem__(self, i: int):
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        # the DataLoader fetches a whole batch through here; transform it in one go
        x, y = self.batch(torch.as_tensor(indices))
        return list(zip(x, y))


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into len(fractions) + 1 parts (the rest comes first)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions]
    cuts = [n - sum(sizes)] + sizes
    return list(torch.split(perm, cuts))


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    x = images.float().div_(255.0)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()


# ---------------------------------------------------------------------------------------------

class ImageClassificationDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = "digits",
        data_dir: str | None = None,
        hf_id: str | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        train_subset: int | None = None,
        image_size: int | None = None,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,  # HF downloads + converted tensors; None: HF's default cache only
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} is not an option; choose one of: {', '.join(SOURCES)}")
        info = SOURCES[source]
        self.source, self.info = source, info
        self.hf_id = hf_id or info.hf_id
        self.image_column = image_column or info.image_column
        self.label_column = label_column or info.label_column
        if source == "hf" and not (self.hf_id and self.image_column and self.label_column):
            raise ValueError("data.source=hf needs data.hf_id, data.image_column and data.label_column")
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"data.{name}={frac} must lie in [0, 1)")
        self.data_dir = data_dir or FASHION_MNIST_DIR
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.train_subset, self.image_size = train_subset, image_size
        self.normalize, self.mean, self.std = normalize, mean, std
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.cache_dir = cache_dir
        self.splits: dict[str, Split] | None = None
        self.datasets: dict[str, ImageTensorDataset] = {}
        self._num_classes: int | None = None

    # --- loading -----------------------------------------------------------------------------
    def load_raw(self) -> dict[str, Split]:
        """The source's own splits, from ``cache_dir`` when it was cached before."""
        cache = self._cache_path()
        if cache is not None and cache.is_file():
            return torch.load(cache, weights_only=True)
        if self.source == "digits":
            raw = load_digits_split()
        elif self.source == "fashion_mnist":
            raw = load_fashion_mnist(self.data_dir)
        else:
            raw = load_hf_images(self.hf_id, self.image_column, self.label_column, cache_dir=self.cache_dir)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(raw, cache)
        return raw

    def _cache_path(self) -> Path | None:
        if self.cache_dir is None or self.source == "digits":
            return None
        ident = f"{self.source}|{self.hf_id}|{self.data_dir}|{self.image_column}|{self.label_column}"
        return Path(self.cache_dir) / f"{self.source}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}.pt"

    def make_splits(self, raw: dict[str, Split]) -> dict[str, Split]:
        """train/val/test, deterministic in ``seed``; the source's test split is kept when it has one."""
        if "test" in raw:
            train_all, test = raw["train"], raw["test"]
            rest, val_idx = split_indices(len(train_all[1]), [self.val_fraction], self.seed)
        else:
            train_all = raw["all"]
            rest, val_idx, test_idx = split_indices(len(train_all[1]), [self.val_fraction, self.test_fraction],
                                                    self.seed)
            test = (train_all[0][test_idx], train_all[1][test_idx])
        if self.train_subset is not None:
            rest = rest[: self.train_subset]  # already a seeded permutation: a random subset
        pick = lambda idx: (train_all[0][idx], train_all[1][idx])  # noqa: E731
        return {"train": pick(rest), "val": pick(val_idx), "test": test}

    def prepare_data(self) -> None:
        # downloads (HF) or checks the files (Fashion-MNIST) once, before setup on every process
        if self.source != "digits" and self.cache_dir is not None:
            self.load_raw()

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.splits = self.make_splits(self.load_raw())
        train_images, train_labels = self.splits["train"]
        if not self.normalize:
            mean, std = [0.0] * train_images.shape[1], [1.0] * train_images.shape[1]
        elif self.mean is None or self.std is None:
            mean, std = channel_stats(train_images)  # from the training split only
        else:
            mean, std = list(self.mean), list(self.std)
        self.mean, self.std = mean, std
        self._num_classes = max(int(y.max()) for _, y in self.splits.values() if len(y)) + 1
        self.datasets = {name: ImageTensorDataset(x, y, mean, std, self.image_size)
                         for name, (x, y) in self.splits.items()}

    # --- what a model needs to know -----------------------------------------------------------
    @property
    def num_classes(self) -> int:
        if self._num_classes is not None:
            return self._num_classes
        if self.info.num_classes is not None and self.source != "hf" and self.label_column == self.info.label_column:
            return self.info.num_classes
        raise RuntimeError(f"num_classes of data.source={self.source} is known after setup(); call it first")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the batches (after ``image_size`` resizing)."""
        if self.splits is not None:
            c, h, w = self.splits["train"][0].shape[1:]
        elif self.info.shape is not None:
            c, h, w = self.info.shape
        else:
            raise RuntimeError(f"the image shape of data.source={self.source} is known after setup(); call it first")
        return (c, self.image_size, self.image_size) if self.image_size else (c, h, w)

    # --- loaders ------------------------------------------------------------------------------
    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> DataLoader:
        from data.resumable import resumable_loader

        self.setup()
        return resumable_loader(self.datasets["train"], self.batch_size, self.seed, self.trainer,
                                num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
