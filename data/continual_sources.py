"""What each continual-learning data source is, without loading anything (read by config checks before any
heavy import): image shape, class count, HF id / config and columns. The loaders live in ``data/continual.py``."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContinualSource:
    shape: tuple[int, int, int] | None  # (C, H, W); None: known once loaded
    num_classes: int | None
    hf_id: str | None = None
    hf_config: str | None = None
    image_column: str = "image"
    label_column: str = "label"


SOURCES = {
    "digits": ContinualSource((1, 8, 8), 10),
    "fashion_mnist": ContinualSource((1, 28, 28), 10),
    "mnist": ContinualSource((1, 28, 28), 10, "ylecun/mnist"),
    "svhn": ContinualSource((3, 32, 32), 10, "ufldl-stanford/svhn", "cropped_digits"),
    "cifar10": ContinualSource((3, 32, 32), 10, "uoft-cs/cifar10", None, "img", "label"),
    "hf": ContinualSource(None, None),
}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")
