"""ImageClassificationDataModule: digits, Fashion-MNIST IDX files, HF datasets (local, offline)."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from data import images
from data.images import FASHION_MNIST_DIR, ImageClassificationDataModule, read_idx

HAS_FASHION = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file()


def first_batch(dm, split="train"):
    return next(iter(getattr(dm, f"{split}_dataloader")()))


# --- digits -----------------------------------------------------------------------------------

def test_digits_splits_shapes_and_normalisation():
    dm = ImageClassificationDataModule("digits", val_fraction=0.1, test_fraction=0.2, batch_size=32)
    assert dm.num_classes == 10 and dm.image_shape == (1, 8, 8)  # known before setup
    dm.setup()
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 1258, "val": 180, "test": 359} and sum(sizes.values()) == 1797
    x, y = first_batch(dm)
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    train_x = dm.datasets["train"].batch(torch.arange(sizes["train"]))[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3


def test_splits_are_deterministic_in_the_seed_and_disjoint():
    a, b, c = (ImageClassificationDataModule("digits", seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])
    assert torch.equal(first_batch(a)[1], first_batch(b)[1])  # same shuffle too
    # the three parts cover the 1797 images once: compare as multisets of (image bytes, label)
    rows = lambda dm: sorted(  # noqa: E731
        bytes(x.numpy()) + bytes([int(y)]) for part in dm.splits.values() for x, y in zip(*part))
    assert rows(a) == rows(c) and len(rows(a)) == 1797


def test_resize_subset_and_fixed_normalisation():
    dm = ImageClassificationDataModule("digits", image_size=16, train_subset=100, normalize=False, batch_size=64)
    dm.setup()
    assert len(dm.datasets["train"]) == 100 and dm.image_shape == (1, 16, 16)
    x, _ = first_batch(dm, "val")
    assert x.shape[1:] == (1, 16, 16) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    fixed = ImageClassificationDataModule("digits", mean=[0.5], std=[0.25])
    fixed.setup()
    assert fixed.mean == [0.5] and fixed.std == [0.25]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="data.source='mnist3'.*digits, fashion_mnist, cifar10"):
        ImageClassificationDataModule("mnist3")
    with pytest.raises(ValueError, match="data.val_fraction"):
        ImageClassificationDataModule("digits", val_fraction=1.5)
    with pytest.raises(ValueError, match="hf_id"):
        ImageClassificationDataModule("hf")
    with pytest.raises(RuntimeError, match="setup"):
        ImageClassificationDataModule("hf", hf_id="x", image_column="i", label_column="l").num_classes


# --- Fashion-MNIST ----------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_fashion_layout_on_fake_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz").tolist() == [i % 10 for i in range(20)]
    dm = ImageClassificationDataModule("fashion_mnist", data_dir=str(tmp_path), val_fraction=0.2)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 40, "val": 10, "test": 20}
    assert first_batch(dm)[0].shape == (40, 1, 28, 28)


def test_missing_fashion_files_say_how_to_install(tmp_path):
    dm = ImageClassificationDataModule("fashion_mnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not HAS_FASHION, reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    dm = ImageClassificationDataModule("fashion_mnist", val_fraction=0.1, batch_size=128)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 54000, "val": 6000, "test": 10000}
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28)
    assert torch.bincount(dm.splits["test"][1]).tolist() == [1000] * 10
    x, y = first_batch(dm)
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,)


# --- HF datasets (local stand-ins, no network) ------------------------------------------------

def tiny_hf_dataset(label_column="fine_label", n_train=40, n_test=10, mode="RGB"):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if mode == "RGB" else (32, 32)

    def split(n):
        imgs = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(n)]
        feats = datasets.Features({"img": datasets.Image(), label_column: datasets.ClassLabel(num_classes=5)})
        return datasets.Dataset.from_dict({"img": imgs, label_column: [i % 5 for i in range(n)]}, features=feats)

    return datasets.DatasetDict(train=split(n_train), test=split(n_test))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_saved_to_disk_folder(tmp_path, offline):
    tiny_hf_dataset().save_to_disk(tmp_path / "saved")
    dm = ImageClassificationDataModule("cifar100", hf_id=str(tmp_path / "saved"), val_fraction=0.25,
                                       batch_size=8)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 30, "val": 10, "test": 10}
    assert dm.image_shape == (3, 32, 32) and dm.num_classes == 5
    x, y = first_batch(dm)
    assert x.shape == (8, 3, 32, 32) and len(dm.mean) == 3


def test_hf_parquet_folder_through_load_dataset(tmp_path, offline, monkeypatch):
    dsd = tiny_hf_dataset(label_column="label", mode="L")
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        dsd[split].to_parquet(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet")
    calls = []
    import datasets
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    dm = ImageClassificationDataModule("cifar10", hf_id=str(tmp_path / "pq"), cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert calls == [(str(tmp_path / "pq"),)]  # the same call as load_dataset("uoft-cs/cifar10")
    assert dm.image_shape == (1, 32, 32) and len(dm.datasets["test"]) == 10
    # converted tensors are cached: a second module does not load the dataset again
    monkeypatch.setattr(images, "load_hf_images", lambda *a, **k: pytest.fail("cache not used"))
    again = ImageClassificationDataModule("cifar10", hf_id=str(tmp_path / "pq"), cache_dir=str(tmp_path / "cache"))
    again.setup()
    assert torch.equal(again.splits["train"][0], dm.splits["train"][0])


def test_hf_missing_column_is_named(tmp_path, offline):
    tiny_hf_dataset(label_column="label").save_to_disk(tmp_path / "saved")
    dm = ImageClassificationDataModule("cifar100", hf_id=str(tmp_path / "saved"))  # expects fine_label
    with pytest.raises(ValueError, match="no column 'fine_label'; columns: img, label"):
        dm.setup()
    ok = ImageClassificationDataModule("hf", hf_id=str(tmp_path / "saved"), image_column="img", label_column="label")
    ok.setup()
    assert ok.num_classes == 5


def test_source_ids():
    assert images.SOURCES["cifar10"].hf_id == "uoft-cs/cifar10"
    assert ImageClassificationDataModule("cifar100").label_column == "fine_label"
    assert ImageClassificationDataModule("cifar100", label_column="coarse_label").label_column == "coarse_label"
