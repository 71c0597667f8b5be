"""The speech-probing datamodule: a task's utterances -> frozen-Whisper features, cached once, as batches.

``prepare_cache()`` (called once by the ``speech`` paradigm, before any probe trains) loads the task
(a synthetic espeak-ng set or a real corpus folder), loads the frozen encoder and builds the feature cache
(``modules/speech/cache.py``): one encoder pass per utterance and condition, every later probe and every
later run with the same audio, encoder and settings reads the shards from disk. Splits:

- train: the training split, clean features (or ``train_condition``, e.g. multi-condition training);
- val / test: the validation / test split under every condition of ``conditions`` (one loader each), named
  by ``eval_conditions(split)``: ``[{"condition": "clean"}, {"condition": "snr10_white"}, ...]``; the best
  layer setting under a condition is chosen on that condition's validation accuracy, reported on its test.

A batch is ``{"hidden": (L+1, B, T, C), "lengths": (B,), "labels": (B,) or (B, slots)}``; after
``set_layer(i)`` (a single-layer probe) ``hidden`` is that state only, (1, B, T, C). The training
loader is ``data/resumable.py``'s (exact resume mid-epoch).

Conditions are written as metric keys (``clean``, ``snr10_white``, ``rt60_0.6``, ``rt60_0.3_snr5_babble``)
or in ``Condition.parse``'s form (``snr=10,noise=white``); ``parse_condition`` reads both.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from data.speech_tasks import (INTENT_TASKS, TASKS, SpeechDataError, check_task, default_cache_dir,  # noqa: F401
                               load_task, parse_condition)
from modules.speech.corruption import Condition

class _Indices(Sequence):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _OnCPU:
    """An upstream on another device that hands the cache its hidden states on the CPU."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.name, self.pad_to_30s, self.fingerprint = upstream.name, upstream.pad_to_30s, upstream.fingerprint

    def __call__(self, waves):
        hidden, lengths = self.upstream(waves)
        return hidden.cpu(), lengths.cpu()


class SpeechDataModule(pl.LightningDataModule):
    def __init__(self, task: str = "keywords", root: str | None = None, fold: int = 1,
                 model: str = "whisper-tiny.en", pad_to_30s: bool = True, dtype: str = "float32",
                 encode_device: str = "cpu",
                 conditions: Sequence[str] = ("clean",), train_condition: str = "clean",
                 corruption_seed: int = 0, noise_dir: str | None = None, rir_dir: str | None = None,
                 babble_talkers: int = 5, babble_pool: int = 200,
                 batch_size: int = 32, eval_batch_size: int = 64, limit_train: int | None = None,
                 limit_eval: int | None = None, encode_batch_size: int = 16, cache_dir: str | None = None,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        check_task(task, root)
        self.task, self.root, self.fold = task, root, fold
        self.model, self.pad_to_30s, self.dtype, self.encode_device = model, pad_to_30s, dtype, encode_device
        self.conditions = [parse_condition(c) for c in conditions]
        if not self.conditions:
            raise SpeechDataError("corruption.conditions is empty; give at least [clean]")
        self.train_condition = parse_condition(train_condition)
        self.corruption_seed, self.noise_dir, self.rir_dir = corruption_seed, noise_dir, rir_dir
        self.babble_talkers, self.babble_pool_size = babble_talkers, babble_pool
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.limit_train, self.limit_eval = limit_train, limit_eval
        self.encode_batch_size, self.num_workers, self.seed = encode_batch_size, num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.prepared = False
        self.stats: dict[str, Any] = {}
        self.layer: int | None = None  # set_layer: batches carry only this hidden state (single-layer probes)

    # --- the cache: once, before any probe -------------------------------------------------------
    def _items(self, speech_set, split: str, limit: int | None):
        items = speech_set.split(split)
        return items[:limit] if limit else items

    def cache_folder(self) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(self.model)).strip("_")
        return self.cache_dir / f"{safe}-{'pad30' if self.pad_to_30s else 'short'}"

    def prepare_cache(self) -> dict[str, Any]:
        """Load the task and the encoder, fill the cache (one pass per utterance and condition), read it."""
        if self.prepared:
            return self.stats
        from modules.speech.cache import FeatureCache
        from modules.speech.corruption import Corruptor
        from modules.speech.upstream import WhisperUpstream

        start = time.perf_counter()
        speech_set = load_task(self.task, self.root, self.fold)
        self.classes = speech_set.classes
        self.num_classes = speech_set.num_classes
        splits = {"train": self._items(speech_set, "train", self.limit_train),
                  "valid": self._items(speech_set, "valid", self.limit_eval),
                  "test": self._items(speech_set, "test", self.limit_eval)}
        waves = {s: {it.id: it.audio() for it in items} for s, items in splits.items()}
        babble = {}
        if any(c.noise == "babble" for c in [*self.conditions, self.train_condition]):
            ids = list(waves["train"])
            step = max(1, len(ids) // max(1, self.babble_pool_size))
            babble = {i: waves["train"][i] for i in ids[::step][: self.babble_pool_size]}
        upstream = WhisperUpstream(self.model, pad_to_30s=self.pad_to_30s, dtype=self.dtype)
        self.num_layers, self.hidden_size = upstream.num_layers, upstream.hidden_size
        if self.encode_device != "cpu":  # the encoder on the GPU while the cache is built
            upstream = _OnCPU(upstream.to(self.encode_device))
        corruptor = Corruptor(seed=self.corruption_seed, noise_dir=self.noise_dir, rir_dir=self.rir_dir,
                              babble_pool=babble, babble_talkers=self.babble_talkers)
        cache = FeatureCache(self.cache_folder(), upstream, corruptor, batch_size=self.encode_batch_size)
        tag = speech_set.name + (f"-fold{self.fold}" if self.task == "iemocap" else "")
        name = {s: f"{tag}-{s}" + (f"-n{len(waves[s])}" if (self.limit_train if s == "train" else self.limit_eval)
                                   else "") for s in splits}
        self.train_features = cache.get(name["train"], waves["train"], self.train_condition)
        self.val_features = [cache.get(name["valid"], waves["valid"], c) for c in self.conditions]
        self.test_features = [cache.get(name["test"], waves["test"], c) for c in self.conditions]
        labels = {s: torch.tensor([it.label for it in items]) for s, items in splits.items()}
        self.train_labels, self.val_labels, self.test_labels = labels["train"], labels["valid"], labels["test"]
        del upstream, cache.upstream
        needed = Counter({(name["train"], self.train_condition.key): len(waves["train"])})
        for c in self.conditions:
            needed[(name["valid"], c.key)] = len(waves["valid"])
            needed[(name["test"], c.key)] = len(waves["test"])
        self.stats = {
            "cache/encoder_passes": int(sum(cache.passes.values())),  # utterances sent through the encoder now
            "cache/utterance_conditions": int(sum(needed.values())),  # (utterance, condition) pairs the run needs
            "cache/shards_built": sum(1 for k in needed if cache.passes.get(k)),
            "cache/shards_reused": sum(1 for k in needed if not cache.passes.get(k)),
            "cache/seconds": time.perf_counter() - start,
            "data/train_utterances": len(waves["train"]), "data/val_utterances": len(waves["valid"]),
            "data/test_utterances": len(waves["test"]),
        }
        self.passes = {f"{s}@{c}": int(n) for (s, c), n in cache.passes.items()}
        self.prepared = True
        return self.stats

    def setup(self, stage: str | None = None) -> None:
        self.prepare_cache()

    # --- loaders --------------------------------------------------------------------------------
    def eval_conditions(self, split: str) -> list[dict[str, str]]:
        return [{"condition": c.key} for c in self.conditions]  # val and test alike

    def set_layer(self, layer: int | None) -> None:
        """Loaders built from now on gather only hidden state ``layer`` ((1, B, T, C)); None: all of them."""
        self.layer = layer

    def _collate(self, features, labels):
        layer = self.layer

        def collate(indices: list[int]) -> dict[str, torch.Tensor]:
            hidden, lengths = features.batch(indices, layer)
            return {"hidden": hidden, "lengths": lengths, "labels": labels[indices]}

        return collate

    def train_dataloader(self) -> DataLoader:
        from data.resumable import resumable_loader

        return resumable_loader(_Indices(len(self.train_features)), self.batch_size, self.seed, self.trainer,
                                collate_fn=self._collate(self.train_features, self.train_labels),
                                num_workers=self.num_workers)

    def _eval_loader(self, features, labels) -> DataLoader:
        return DataLoader(_Indices(len(features)), batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=self._collate(features, labels), num_workers=self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(f, self.val_labels) for f in self.val_features]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(f, self.test_labels) for f in self.test_features]
