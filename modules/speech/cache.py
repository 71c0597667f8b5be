"""Feature cache: one encoder pass per utterance and condition, every probe then trains on disk.

A shard per (split, condition) holds all hidden states of all its utterances, fp16, valid frames only
(the 30-s padding is never stored): ``hidden`` (L+1, sum T_i, C), ``offsets`` (N+1,), ids in metadata.
Its file name carries a hash of everything the features depend on: upstream name + weight fingerprint,
the pad switch, each utterance's id and audio content, the condition, the corruption seed (and the
noise / RIR folders' file lists). Change any of them and the shard is rebuilt (stale ones are removed).
``passes[(split, condition_key)]`` counts utterances sent through the encoder, for benchmarks and tests.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from modules.speech.corruption import Condition, Corruptor
from modules.speech.upstream import FRAME_SAMPLES

CACHE_VERSION = 1  # bump when the shard layout or the encoder forward changes


def audio_hash(wave: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()[:16]


def _folder_listing(folder) -> list:
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())


class CachedFeatures:
    """The hidden states of one (split, condition): ``[i]`` -> (L+1, T_i, C) float32."""

    def __init__(self, ids: list[str], hidden: torch.Tensor, offsets: torch.Tensor):
        self.ids, self._hidden, self._offsets = ids, hidden, offsets  # (L+1, sum T, C) fp16, (N+1,)
        self.lengths = offsets[1:] - offsets[:-1]  # (N,)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._hidden[:, self._offsets[i]:self._offsets[i + 1]].float()  # (L+1, T_i, C)

    def batch(self, indices: Sequence[int], layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-padded (L+1, B, T_max, C) float32 and lengths (B,), ready for featurizer + head;
        ``layer``: that hidden state only, (1, B, T_max, C) (a single-layer probe reads 1/(L+1) of the data)."""
        rows = slice(None) if layer is None else slice(layer, layer + 1)
        items = [self._hidden[rows, self._offsets[i]:self._offsets[i + 1]] for i in indices]  # fp16 views
        t_max = max(x.shape[1] for x in items)
        out = torch.zeros(items[0].shape[0], len(items), t_max, items[0].shape[2])
        for b, x in enumerate(items):
            out[:, b, : x.shape[1]] = x  # fp16 -> fp32 in the copy
        return out, self.lengths[list(indices)]

    def pooled(self) -> torch.Tensor:
        """Mean over valid frames, every layer: (N, L+1, C) float32 (linear-probe input)."""
        return torch.stack([self[i].mean(1) for i in range(len(self))])


class FeatureCache:
    def __init__(self, root: str | Path, upstream, corruptor: Corruptor | None = None, batch_size: int = 8):
        self.root = Path(root)
        self.upstream = upstream
        self.corruptor = corruptor or Corruptor()
        self.batch_size = batch_size
        self.passes: Counter = Counter()  # (split, condition key) -> utterances encoded
        self._upstream_id = f"{upstream.name}|{upstream.fingerprint}"

    def shard_key(self, split: str, condition: Condition, ids: Sequence[str], hashes: Sequence[str]) -> str:
        c = self.corruptor
        blob = json.dumps(dict(version=CACHE_VERSION, upstream=self._upstream_id, pad_to_30s=self.upstream.pad_to_30s,
                               split=split, condition=str(condition), seed=c.seed, audio=list(zip(ids, hashes)),
                               noise_dir=_folder_listing(c.noise_dir) if condition.noise == "file" else None,
                               rir_dir=_folder_listing(c.rir_dir) if condition.rir == "file" else None,
                               babble=sorted(c.babble_pool) if condition.noise == "babble" else None,
                               talkers=c.babble_talkers if condition.noise == "babble" else None))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def shard_path(self, split: str, condition: Condition, key: str) -> Path:
        return self.root / f"{split}__{condition.key}__{key}.safetensors"

    def get(self, split: str, utterances: Mapping[str, np.ndarray], condition: "Condition | str" = "clean") -> CachedFeatures:
        """Features of ``utterances`` ({id: 16 kHz wave}, kept in this order) under ``condition``."""
        from safetensors.torch import load_file

        condition = Condition.parse(condition)
        ids = list(utterances)
        if not ids:
            raise ValueError(f"split {split!r} has no utterances to encode")
        key = self.shard_key(split, condition, ids, [audio_hash(utterances[i]) for i in ids])
        path = self.shard_path(split, condition, key)
        if not path.is_file():
            self._build(split, condition, utterances, path)
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        return CachedFeatures(meta["ids"], tensors["hidden"], tensors["offsets"])

    def _encode_groups(self, ids: list[str], waves: Mapping[str, np.ndarray]) -> list[list[str]]:
        """Batches to encode. Without 30-s padding a batch is padded to its longest clip, so only clips
        with the same frame count share one: features then never depend on their batch neighbours."""
        if self.upstream.pad_to_30s:
            groups = [ids]
        else:
            by_len: dict[int, list[str]] = {}
            for i in ids:
                by_len.setdefault(math.ceil(len(waves[i]) / FRAME_SAMPLES), []).append(i)
            groups = [by_len[k] for k in sorted(by_len)]
        return [g[s:s + self.batch_size] for g in groups for s in range(0, len(g), self.batch_size)]

    def _build(self, split: str, condition: Condition, utterances: Mapping[str, np.ndarray], path: Path) -> None:
        from safetensors.torch import save_file

        ids = list(utterances)
        waves = {i: self.corruptor.apply(utterances[i], condition, i) for i in ids}
        pieces: dict[str, torch.Tensor] = {}
        for batch in self._encode_groups(ids, waves):
            hidden, lengths = self.upstream([waves[i] for i in batch])  # (L+1, B, T, C), (B,)
            self.passes[(split, condition.key)] += len(batch)
            for b, i in enumerate(batch):
                pieces[i] = hidden[:, b, : int(lengths[b])].to(torch.float16)
        lengths = torch.tensor([pieces[i].shape[1] for i in ids])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f"{split}__{condition.key}__*"):
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"hidden": torch.cat([pieces[i] for i in ids], dim=1).contiguous(), "offsets": offsets}, str(tmp))
        path.with_suffix(".json").write_text(json.dumps({"ids": ids, "condition": str(condition),
                                                         "upstream": self._upstream_id}))
        tmp.rename(path)  # the shard appears only when complete
