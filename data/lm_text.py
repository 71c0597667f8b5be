"""Plain-text language-modelling data: a token stream cut into training blocks and strided evaluation windows.

Sources (``source``):
- ``pydoc``: offline, Python's own reference documentation as shipped with every CPython
  (``pydoc_data.topics``: the 79 language-reference topics ``help()`` shows, ~465k characters), split by
  topic with a stable hash into train (80 %), validation (10 %) and test (10 %);
- ``hf``: the HF dataset ``hf_id`` / ``hf_config`` (``Skylion007/openwebtext``; ``Salesforce/wikitext`` with
  ``wikitext-103-raw-v1``), column ``text_column``; ``splits`` maps our split names to HF split strings,
  slices included (``train[:10%]``: the 10 % OpenWebText slice of KnGPT2's pre-training).

Documents are tokenised without special tokens and joined with EOS into one stream per split.
Training: non-overlapping ``block_size`` blocks, every token a label, shuffled resumably (data/resumable.py).
Evaluation, one fixed perplexity protocol: windows of ``eval_context`` tokens advanced by ``eval_stride``;
each window scores only the tokens no earlier window scored (the others are context, label -100), so every
token but the stream's first is predicted exactly once, with at least ``eval_context - eval_stride`` tokens of
context after the first window. Perplexity = exp(total NLL / scored tokens) over the split (the module
weights each batch by its scored tokens).
"""
from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from data.fixtures import hub_path  # a rehearsal's local copy of a hub dataset (docs/rehearsal.md)

IGNORE_INDEX = -100
SOURCES = ("pydoc", "hf")
SPLITS = ("train", "validation", "test")


def _bucket(key: str) -> str:
    h = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
    return "test" if h == 0 else "validation" if h == 1 else "train"


def pydoc_documents(split: str) -> list[str]:
    """The ``pydoc_data.topics`` texts of one split (topics in sorted order)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics) if _bucket(f"pydoc:{k}") == split]


def hf_documents(hf_id: str, hf_config: str | None, split: str, text_column: str = "text") -> list[str]:
    from datasets import load_dataset

    rows = load_dataset(hub_path(hf_id), hf_config, split=split)
    return [t for t in rows[text_column] if t and t.strip()]


def windows(ids: list[int], context: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of the strided evaluation protocol (see the module docstring)."""
    out, prev_end = [], 0
    for begin in range(0, max(len(ids) - 1, 1), stride):
        end = min(begin + context, len(ids))
        chunk = ids[begin:end]
        scored = end - prev_end  # tokens no earlier window scored
        labels = [IGNORE_INDEX] * (len(chunk) - scored) + chunk[len(chunk) - scored:]
        out.append((chunk, labels))
        prev_end = end
        if end == len(ids):
            break
    return out


class LMTextDataModule(pl.LightningDataModule):
    def __init__(self, source: str = "pydoc", hf_id: str | None = None, hf_config: str | None = None,
                 text_column: str = "text", splits: dict | None = None, block_size: int = 128,
                 eval_context: int = 128, eval_stride: int = 64, batch_size: int = 8, eval_batch_size: int = 8,
                 limit_train: int | None = None, limit_val: int | None = None, limit_test: int | None = None,
                 num_workers: int = 0, seed: int = 0, tokenizer: Any = None):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is not an option; valid choices: {', '.join(SOURCES)}")
        self.source, self.hf_id, self.hf_config, self.text_column = source, hf_id, hf_config, text_column
        self.split_names = {s: s for s in SPLITS} | dict(splits or {})
        self.block_size, self.eval_context, self.eval_stride = block_size, eval_context, eval_stride
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.limits = {"train": limit_train, "validation": limit_val, "test": limit_test}
        self.seed, self.tokenizer = seed, tokenizer
        self.examples: dict[str, list[tuple[list[int], list[int]]]] = {}

    def documents(self, split: str) -> list[str]:
        if self.source == "pydoc":
            return pydoc_documents(self.split_names[split])
        return hf_documents(self.hf_id, self.hf_config, self.split_names[split], self.text_column)

    def stream(self, split: str) -> list[int]:
        tok, ids = self.tokenizer, []
        for doc in self.documents(split):
            ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return ids

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise ValueError("LMTextDataModule needs a tokenizer")
        for split in SPLITS:
            if split in self.examples:
                continue
            ids = self.stream(split)
            if split == "train":
                n = len(ids) // self.block_size
                blocks = [ids[i * self.block_size:(i + 1) * self.block_size] for i in range(n)]
                examples = [(b, b) for b in blocks]
            else:
                examples = windows(ids, self.eval_context, self.eval_stride)
            limit = self.limits[split]
            self.examples[split] = examples[:limit] if limit else examples

    def collate(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        mask = torch.zeros_like(input_ids)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            labels[i, :len(lab)] = torch.tensor(lab)
            mask[i, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    def train_dataloader(self) -> DataLoader:
        from data.resumable import resumable_loader

        return resumable_loader(self.examples["train"], self.batch_size, self.seed, self.trainer,
                                num_workers=self.num_workers, collate_fn=self.collate)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.examples[split], batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=partial(self.collate))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
