"""Instruction / QA data for causal-LM fine-tuning, with prompt tokens masked out of the loss.

Records are plain dicts ``{"instruction", "input", "output", "answers"}`` from a named source
(``stdlib_qa`` offline, HF datasets by name in data/instruct_sources.py) or a local file.
Training batches are right-padded; test batches also carry left-padded prompts and the reference
answers, for greedy generation and exact match.
"""
from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from modules.lm_module import IGNORE_INDEX  # label value the loss ignores (prompt, padding)


def load_split(source: str, split: str, fmt: str | None = None, seed: int = 0,
               options: dict | None = None) -> list[dict]:
    """Records of one split from ``stdlib_qa``, a registry name, or a local file/folder."""
    if source == "stdlib_qa":
        from data.stdlib_qa import build_stdlib_qa

        return build_stdlib_qa(seed=seed, **(options or {}))[split]
    if Path(source).exists() and fmt is None:
        return read_local_records(Path(source), split)
    from data.instruct_sources import load_records

    return load_records(source, split, format=fmt)


def read_local_records(path: Path, split: str) -> list[dict]:
    """Our own record format as JSON lines: a folder of ``<split>.jsonl`` files, or one file
    split deterministically 80/10/10 (train/validation/test) by line number."""
    from data.stdlib_qa import load_jsonl_records

    if path.is_dir():
        return load_jsonl_records(path / f"{split}.jsonl")
    bucket = {"train": range(0, 8), "validation": range(8, 9), "test": range(9, 10)}[split]
    return [r for i, r in enumerate(load_jsonl_records(path)) if i % 10 in bucket]


def format_prompt(template: str, record: dict) -> str:
    extra = record.get("input") or ""
    return template.format(instruction=record["instruction"], input=f"\n{extra}" if extra else "")


class InstructionDataModule(pl.LightningDataModule):
    def __init__(self, source: str = "stdlib_qa", format: str | None = None,
                 prompt_template: str = "### Question:\n{instruction}{input}\n\n### Answer:\n",
                 max_length: int = 128, batch_size: int = 8, eval_batch_size: int = 16,
                 limit_train: int | None = None, limit_val: int | None = None, limit_test: int | None = None,
                 num_workers: int = 0, seed: int = 0, tokenizer: Any = None,
                 splits: dict[str, str] | None = None, source_options: dict | None = None,
                 mc_eval: dict | None = None):
        super().__init__()
        self.source, self.fmt, self.template = source, format, prompt_template
        self.max_length, self.batch_size, self.eval_batch_size = max_length, batch_size, eval_batch_size
        self.limits = {"train": limit_train, "validation": limit_val, "test": limit_test}
        self.num_workers, self.seed, self.tokenizer = num_workers, seed, tokenizer
        # Our split name -> the source's (e.g. a dataset with no validation split reuses test).
        self.split_names = {"train": "train", "validation": "validation", "test": "test", **(splits or {})}
        self.source_options = dict(source_options or {})  # extra arguments of the source's builder
        # Extra multiple-choice test set scored by choice log-likelihood (MMLU after instruction tuning):
        # {source, format, split, shots_split, few_shot, limit}.
        self.mc_eval = dict(mc_eval) if mc_eval else None
        self.records: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise ValueError("InstructionDataModule needs a tokenizer (set datamodule.tokenizer)")
        for split, source_split in self.split_names.items():
            if split in self.records:
                continue
            rows = load_split(self.source, source_split, self.fmt, self.seed, self.source_options)
            if split == "train":
                rows = list(rows)
                random.Random(self.seed).shuffle(rows)
            limit = self.limits.get(split)
            self.records[split] = list(rows[:limit] if limit else rows)
        if self.mc_eval and "mc" not in self.records:
            self.records["mc"] = self._mc_records()

    def _mc_records(self) -> list[dict]:
        """MC questions, each with its k-shot prompt built from the same subject's shots split."""
        from data.instruct_sources import load_records
        from modules.metrics import build_mmlu_prompt

        mc = self.mc_eval
        load = lambda split, limit=None: load_records(mc["source"], split, limit=limit, format=mc.get("format"))  # noqa: E731
        shots: dict[str, list[dict]] = {}
        for row in load(mc.get("shots_split", "dev")) if mc.get("few_shot", 0) else []:
            shots.setdefault(row["subject"], []).append(row)
        records = []
        for row in load(mc.get("split", "test"), mc.get("limit")):
            k_shot = shots.get(row["subject"], [])[: mc.get("few_shot", 0)]
            prompt = build_mmlu_prompt(row["question"], row["choices"], row["subject"], k_shot)
            records.append({"prompt": prompt, "num_choices": len(row["choices"]), "label": row["label"]})
        return records

    def collate_mc(self, records: list[dict]) -> dict[str, Any]:
        """Left-padded prompts ending in "Answer:", the token of each choice letter, the labels."""
        tok = self.tokenizer
        letters = [tok(f" {chr(65 + i)}", add_special_tokens=False)["input_ids"][-1]
                   for i in range(max(r["num_choices"] for r in records))]
        ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"][-self.max_length:] for r in records]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, seq in enumerate(ids):
            input_ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
        return {"mc_input_ids": input_ids, "mc_attention_mask": mask, "mc_choice_ids": torch.tensor(letters),
                "mc_labels": torch.tensor([r["label"] for r in records])}

    # --- tokenisation -----------------------------------------------------------------
    def encode(self, record: dict) -> dict[str, list[int]]:
        """Prompt ids and answer ids (answer + EOS); the answer is what the loss sees."""
        tok = self.tokenizer
        prompt = tok(format_prompt(self.template, record), add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
            prompt = [tok.bos_token_id] + prompt
        answer = tok(record["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt = prompt[-(self.max_length - 1):]  # keep the end of a long prompt, next to its answer
        answer = answer[: self.max_length - len(prompt)]
        return {"prompt": prompt, "answer": answer}

    def collate(self, records: list[dict], with_generation: bool = False) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        encoded = [self.encode(r) for r in records]
        width = max(len(e["prompt"]) + len(e["answer"]) for e in encoded)
        ids = torch.full((len(records), width), pad, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            seq = e["prompt"] + e["answer"]
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(e["prompt"]): len(seq)] = torch.tensor(e["answer"])  # prompt masked out
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if with_generation:
            gen_width = max(len(e["prompt"]) for e in encoded)
            gen_ids = torch.full((len(records), gen_width), pad, dtype=torch.long)
            gen_mask = torch.zeros_like(gen_ids)
            for i, e in enumerate(encoded):  # left padding: every prompt ends where generation starts
                gen_ids[i, gen_width - len(e["prompt"]):] = torch.tensor(e["prompt"])
                gen_mask[i, gen_width - len(e["prompt"]):] = 1
            batch.update(gen_input_ids=gen_ids, gen_attention_mask=gen_mask,
                         answers=[r.get("answers") or [r["output"]] for r in records])
        return batch

    # --- loaders -----------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool, batch_size: int, with_generation: bool) -> DataLoader:
        return DataLoader(self.records[split], batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.num_workers,
                          collate_fn=partial(self.collate, with_generation=with_generation),
                          generator=torch.Generator().manual_seed(self.seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        from data.resumable import resumable_loader

        return resumable_loader(self.records["train"], self.batch_size, self.seed, self.trainer,
                                num_workers=self.num_workers, collate_fn=partial(self.collate, with_generation=False))

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False, self.eval_batch_size, True)  # val/em chooses the sub-model

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        main = self._loader("test", False, self.eval_batch_size, True)
        if not self.mc_eval:
            return main
        mc = DataLoader(self.records["mc"], batch_size=self.eval_batch_size, collate_fn=self.collate_mc,
                        num_workers=self.num_workers)
        return [main, mc]
