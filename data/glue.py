"""GLUE tasks (and the offline stand-in) as a LightningDataModule of tokenized sentences or sentence pairs.

Sources (``source``):
- ``hf``: the HF dataset ``hf_id`` (``nyu-mll/glue``) with the task name as its config;
- a local folder in GLUE's layout: ``train.tsv|csv`` and ``validation.tsv|csv`` (``dev.tsv`` also read; for
  MNLI ``validation_matched`` / ``validation_mismatched``, or ``dev_matched`` / ``dev_mismatched``), with a
  header row. Columns as in HF's GLUE (``sentence``, ``sentence1``/``sentence2``, ``question1``/``question2``,
  ``premise``/``hypothesis``, ``question``/``sentence``, ``label``) or as in GLUE's own TSV files
  (``#1 String``/``#2 String``/``Quality`` for MRPC, ``score`` for STS-B, ``is_duplicate`` for QQP,
  ``sentence1``/``sentence2``/``gold_label`` for MNLI); labels as integers, GLUE's label words
  (``entailment``, ``not_entailment``, ...) or, for STS-B, floats. TSV is read without quote handling, as
  GLUE's files need. CoLA's header-less original TSV is not read (add the header ``sentence`` / ``label``).
- ``builtin``: the offline stand-in ``stdlib_topics`` (data/stdlib_topics.py), built into the same local layout.

Splits. GLUE's test labels are hidden, so GLUE's validation set is our **test** split (for MNLI two test
loaders, conditions ``testset=matched`` and ``testset=mismatched``), and our **val** split is a held-out
slice of GLUE's train (``val_size``: a fraction or a row count, chosen by ``split_seed``), removed from
training. ``limit_*`` take a seeded random subset, never the first rows (some GLUE files are sorted).
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from data.fixtures import hub_path  # a rehearsal's local copy of a hub dataset (docs/rehearsal.md)

# GLUE's own TSV headers -> HF's column names
COLUMN_ALIASES = {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label", "score": "label",
                  "is_duplicate": "label", "gold_label": "label"}
NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]          # one (single sentence) or two (a pair) HF column names
    num_labels: int                        # 1: regression (STS-B)
    metrics: tuple[str, ...]               # GLUE's official metrics (modules/classifier_module.py)
    test_sets: tuple[tuple[str | None, str, tuple[str, ...]], ...] = ((None, "validation", ("validation", "dev")),)
    label_names: tuple[str, ...] = ()      # label words in files -> their index
    pair_aliases: tuple[tuple[str, str], ...] = ()  # file column -> HF column for this task only

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


_MNLI_TEST = (("matched", "validation_matched", ("validation_matched", "dev_matched")),
              ("mismatched", "validation_mismatched", ("validation_mismatched", "dev_mismatched")))

TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", ("sentence",), 2, ("mcc", "acc")),
    GlueTask("sst2", ("sentence",), 2, ("acc",)),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("f1", "acc")),
    GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman")),
    GlueTask("qqp", ("question1", "question2"), 2, ("f1", "acc")),
    GlueTask("mnli", ("premise", "hypothesis"), 3, ("acc",), _MNLI_TEST, NLI3,
             (("sentence1", "premise"), ("sentence2", "hypothesis"))),
    GlueTask("qnli", ("question", "sentence"), 2, ("acc",), label_names=NLI2),
    GlueTask("rte", ("sentence1", "sentence2"), 2, ("acc",), label_names=NLI2),
)}


def _stdlib_topics() -> GlueTask:
    from data.stdlib_topics import PACKAGES

    return GlueTask("stdlib_topics", ("sentence",), len(PACKAGES), ("acc", "mcc"), label_names=PACKAGES)


TASKS["stdlib_topics"] = _stdlib_topics()
BUILTIN = {"stdlib_topics"}  # tasks built offline (source=builtin)
SOURCES = ("hf", "builtin")  # or a local folder


def get_task(name: str) -> GlueTask:
    if name not in TASKS:
        raise ValueError(f"data.task={name!r} is not a GLUE task; valid choices: {', '.join(TASKS)}")
    return TASKS[name]


# --- reading rows -------------------------------------------------------------------------------------
def _label(value: Any, task: GlueTask, where: str) -> float | int:
    text = str(value).strip()
    if task.is_regression:
        return float(text)
    if text in task.label_names:
        return task.label_names.index(text)
    try:
        label = int(float(text))
    except ValueError:
        raise ValueError(f"{where}: label {text!r} is not an integer"
                         + (f" or one of {', '.join(task.label_names)}" if task.label_names else "")) from None
    if not 0 <= label < task.num_labels:
        raise ValueError(f"{where}: label {label} outside 0..{task.num_labels - 1}")
    return label


def normalize_rows(rows: Sequence[dict], task: GlueTask, where: str) -> list[dict]:
    """Rows with the task's text columns and ``label`` (HF or GLUE-TSV column names); malformed rows
    (a missing field, as in a few lines of GLUE's QQP file) are skipped."""
    aliases = {**COLUMN_ALIASES, **dict(task.pair_aliases)}
    out = []
    for i, raw in enumerate(rows):
        row = {aliases.get(k, k): v for k, v in raw.items() if k is not None}
        if any(row.get(c) is None for c in (*task.text_columns, "label")):
            continue
        out.append({**{c: str(row[c]) for c in task.text_columns},
                    "label": _label(row["label"], task, f"{where} row {i + 1}")})
    if rows and not out:
        have = ", ".join(k for k in rows[0] if k is not None)
        raise ValueError(f"{where}: no row has the columns {', '.join(task.text_columns)}, label "
                         f"(the file has: {have})")
    return out


def _find(folder: Path, stems: Sequence[str]) -> Path:
    for stem in stems:
        for ext in (".tsv", ".csv"):
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    raise FileNotFoundError(f"{folder}: no {' or '.join(s + '.tsv|csv' for s in stems)}")


def read_table(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        if path.suffix == ".tsv":
            return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.DictReader(fh))


def read_local(folder: str | Path, task: GlueTask) -> dict[str, list[dict]]:
    """{"train": rows, <test set name>: rows, ...} from a folder in GLUE's layout."""
    folder = Path(folder).expanduser()
    out = {"train": normalize_rows(read_table(p := _find(folder, ("train",))), task, str(p))}
    for _, hf_split, stems in task.test_sets:
        path = _find(folder, stems)
        out[hf_split] = normalize_rows(read_table(path), task, str(path))
    return out


def read_hf(hf_id: str, task: GlueTask) -> dict[str, list[dict]]:
    from datasets import load_dataset

    ds = load_dataset(hub_path(hf_id), task.name)
    splits = ["train", *(s for _, s, _ in task.test_sets)]
    return {s: normalize_rows(ds[s].to_list(), task, f"{hf_id}/{task.name}:{s}") for s in splits}


def _subset(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def split_train(rows: list[dict], val_size: float | int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): ``val_size`` rows (a fraction < 1, or a count) held out of train, chosen by ``seed``."""
    n = int(round(val_size * len(rows))) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    n = max(1, min(n, len(rows) - 1))
    held = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


class GlueDataModule(pl.LightningDataModule):
    def __init__(self, task: str = "sst2", tokenizer: Any = None, source: str = "hf", hf_id: str = "nyu-mll/glue",
                 max_length: int = 128, batch_size: int = 32, eval_batch_size: int = 64,
                 val_size: float | int = 0.05, split_seed: int = 0, limit_train: int | None = None,
                 limit_val: int | None = None, limit_test: int | None = None, num_workers: int = 0,
                 seed: int = 0, metric: str | None = None):
        super().__init__()
        self.task = get_task(task)
        self.tokenizer, self.source, self.hf_id = tokenizer, source, hf_id
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.val_size, self.split_seed, self.seed = val_size, split_seed, seed
        self.limits = {"train": limit_train, "val": limit_val, "test": limit_test}
        self.num_workers = num_workers
        self.splits: dict[str, list[dict]] | None = None
        self.test_sets: list[list[dict]] = []

    @property
    def num_labels(self) -> int:
        return self.task.num_labels

    def load_rows(self) -> dict[str, list[dict]]:
        if self.source == "hf":
            return read_hf(self.hf_id, self.task)
        if self.source == "builtin":
            if self.task.name not in BUILTIN:
                raise ValueError(f"data.source=builtin has no task {self.task.name!r}; built-in tasks: "
                                 f"{', '.join(sorted(BUILTIN))}")
            from data.stdlib_topics import build_stdlib_topics

            return read_local(build_stdlib_topics(), self.task)
        return read_local(self.source, self.task)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        rows = self.load_rows()
        train, val = split_train(rows["train"], self.val_size, self.split_seed)
        self.splits = {"train": _subset(train, self.limits["train"], self.split_seed),
                       "val": _subset(val, self.limits["val"], self.split_seed)}
        self.test_sets = [_subset(rows[s], self.limits["test"], self.split_seed) for _, s, _ in self.task.test_sets]

    def eval_conditions(self, split: str) -> list[dict[str, str]]:
        """One mapping per loader: MNLI's two test sets are ``testset=matched|mismatched``."""
        if split == "test":
            return [{"testset": name} if name else {} for name, _, _ in self.task.test_sets]
        return [{}]

    # --- batches --------------------------------------------------------------------------------------
    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        columns = [[r[c] for r in rows] for c in self.task.text_columns]
        enc = self.tokenizer(*columns, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        dtype = torch.float32 if self.task.is_regression else torch.long
        return {**enc, "labels": torch.tensor([r["label"] for r in rows], dtype=dtype)}

    def _loader(self, rows: list[dict]) -> DataLoader:
        return DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False, collate_fn=self.collate,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        from data.resumable import resumable_loader

        return resumable_loader(self.splits["train"], self.batch_size, self.seed, self.trainer,
                                collate_fn=self.collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits["val"])

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(rows) for rows in self.test_sets]
        return loaders[0] if len(loaders) == 1 else loaders
