"""Instruction / QA / multiple-choice sources for QDyLoRA (Tables 1-3), as plain record dicts.

Generation records: ``{"instruction", "input", "output", "answers"}`` where ``answers`` lists the
strings an exact-match evaluation accepts (open-ended data: ``[output]``).
Multiple-choice records: ``{"question", "choices", "label", "subject"}``.

``SOURCES`` maps a short name to its Hugging Face dataset (id, config, splits) and a row->record
function. ``load_records`` loads a registry name from the Hub, or a local file/folder in the same
column format (``format=<name>``), so tests and offline runs use the same conversion.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

# Shared with evaluation so that references and predictions are normalised the same way.
from modules.metrics import extract_gsm8k_answer
from data.fixtures import hub_path  # a rehearsal's local copy of a hub dataset (docs/rehearsal.md)

Record = dict[str, Any]


def _record(instruction: str, output: str, input: str = "", answers: list[str] | None = None) -> Record:
    instruction, input, output = instruction.strip(), input.strip(), output.strip()
    return {"instruction": instruction, "input": input, "output": output,
            "answers": answers if answers is not None else [output]}


def _dedupe(items) -> list[str]:
    return list(dict.fromkeys(s for s in items if s))  # keeps order, drops empties


# --- row -> record ----------------------------------------------------------------------------

def alpaca_record(row: Mapping) -> Record:
    # [sure] tatsu-lab/alpaca: instruction, input, output (+ a pre-formatted "text" we ignore).
    return _record(row["instruction"], row["output"], row.get("input") or "")


_TURN = re.compile(r"### (Human|Assistant):")


def oasst1_record(row: Mapping) -> Record:
    # [sure] timdettmers/openassistant-guanaco: one "text" column, "### Human: ...### Assistant: ..."
    # turns (QLoRA's OASST1 subset). The first human turn and first assistant reply make the record.
    parts = _TURN.split(row["text"])  # ["", "Human", " q", "Assistant", " a", ...]
    turns = list(zip(parts[1::2], parts[2::2]))
    human = next((t for who, t in turns if who == "Human"), None)
    reply = next((t for who, t in turns if who == "Assistant"), None)
    if human is None or reply is None:
        raise ValueError(f"oasst1 row has no '### Human:' / '### Assistant:' turn pair: {row['text'][:80]!r}")
    return _record(human, reply)


def self_instruct_record(row: Mapping) -> Record:
    # [sure of columns] yizhongw/self_instruct config "self_instruct": prompt, completion. The prompt
    # already merges instruction and input with one of several random templates (ending e.g. in
    # "Output:"), so it is kept whole; the completion ends with GPT-3's "<|endoftext|>".
    return _record(row["prompt"], row["completion"].replace("<|endoftext|>", ""))


def flan_v2_record(row: Mapping) -> Record:
    # [columns fairly sure, mirror unverified] SirNeural/flan_v2: inputs, targets, task_source,
    # task_name, template_type. It is a very large set of jsonl files: load with a limit or a subset.
    return _record(row["inputs"], row["targets"])


def gsm8k_record(row: Mapping) -> Record:
    # [sure] openai/gsm8k "main": question, answer = worked solution ending in "#### <number>".
    return _record(row["question"], row["answer"], answers=[extract_gsm8k_answer(row["answer"])])


def triviaqa_record(row: Mapping) -> Record:
    # [sure] mandarjoshi/trivia_qa "rc.nocontext": question, answer{value, aliases, normalized_*}.
    # The test split hides answers (empty aliases), so only train/validation are scorable.
    answer = row["answer"]
    return _record(row["question"], answer["value"], answers=_dedupe([answer["value"], *answer["aliases"]]))


def webglm_record(row: Mapping) -> Record:
    # [sure] THUDM/webglm-qa: question, answer (with "[1]"-style citations), references (list of
    # str). The references become the numbered input the answer cites.
    refs = "\n".join(f"[{i}] {ref.strip()}" for i, ref in enumerate(row.get("references") or [], 1))
    return _record(row["question"], row["answer"], refs)


def mmlu_record(row: Mapping) -> Record:
    # [sure] cais/mmlu "all": question, subject, choices (4 strings), answer (int 0-3).
    choices = list(row["choices"])
    if len(choices) != 4 or not 0 <= int(row["answer"]) < 4:
        raise ValueError(f"mmlu row needs 4 choices and answer in 0..3, got {len(choices)} and {row['answer']}")
    return {"question": row["question"].strip(), "choices": choices, "label": int(row["answer"]),
            "subject": row["subject"]}


# --- registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    dataset_id: str
    config: str | None
    splits: tuple[str, ...]
    to_record: Callable[[Mapping], Record]


SOURCES: dict[str, Source] = {
    "alpaca": Source("tatsu-lab/alpaca", None, ("train",), alpaca_record),
    "oasst1": Source("timdettmers/openassistant-guanaco", None, ("train", "test"), oasst1_record),
    # The Hub repo was a loading script (unsupported by datasets>=4) with a parquet conversion;
    # if it does not load, HuggingFaceH4/self_instruct holds the same prompt/completion rows.
    "self_instruct": Source("yizhongw/self_instruct", "self_instruct", ("train",), self_instruct_record),
    "flan_v2": Source("SirNeural/flan_v2", None, ("train",), flan_v2_record),
    "gsm8k": Source("openai/gsm8k", "main", ("train", "test"), gsm8k_record),
    "triviaqa": Source("mandarjoshi/trivia_qa", "rc.nocontext", ("train", "validation", "test"), triviaqa_record),
    "webglm": Source("THUDM/webglm-qa", None, ("train", "validation", "test"), webglm_record),
    "mmlu": Source("cais/mmlu", "all", ("auxiliary_train", "dev", "validation", "test"), mmlu_record),
}

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _choices() -> str:
    return ", ".join(SOURCES)


def _source(name: str, key: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"{key}={name!r} is not a known source; choose one of: {_choices()}")
    return SOURCES[name]


def _load_local(path: Path, split: str):
    import datasets

    if path.is_dir():  # a save_to_disk folder: a Dataset, or a DatasetDict holding ``split``
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"split={split!r} not in {path}; it has: {', '.join(ds)}")
            ds = ds[split]
        return ds
    builder = LOCAL_SUFFIXES.get(path.suffix)
    if builder is None:
        raise ValueError(f"cannot read {path}: use a {', '.join(LOCAL_SUFFIXES)} file or a save_to_disk folder")
    # A single local file is one table; the datasets library names it "train" whatever ``split`` says.
    return datasets.load_dataset(builder, data_files=str(path), split="train")


def _load_hub(source: Source, split: str):
    import datasets

    base_split = split.split("[", 1)[0]  # allow slicing syntax such as "train[:1000]"
    if base_split not in source.splits:
        raise ValueError(f"split={split!r} is not a split of {source.dataset_id}; choose one of: {', '.join(source.splits)}")
    return datasets.load_dataset(hub_path(source.dataset_id), source.config, split=split)


def load_records(name_or_path: str, split: str = "train", limit: int | None = None,
                 format: str | None = None) -> list[Record]:
    """Records of a registry source (downloaded with ``datasets``) or of a local file/folder.

    ``format`` names the registry source whose columns a local file uses; it is required for
    local paths and, for registry names, must match if given. ``limit`` keeps the first rows.
    """
    if name_or_path in SOURCES:
        if format not in (None, name_or_path):
            raise ValueError(f"format={format!r} conflicts with source {name_or_path!r}; omit format for registry names")
        source = SOURCES[name_or_path]
        ds = _load_hub(source, split)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            if path.suffix in LOCAL_SUFFIXES:
                raise FileNotFoundError(f"data file {path} does not exist")
            raise ValueError(f"unknown source {name_or_path!r}; choose one of: {_choices()} "
                             f"(or a local {'/'.join(LOCAL_SUFFIXES)} file or save_to_disk folder)")
        if format is None:
            raise ValueError(f"local data {path} needs format=<source name>; choose one of: {_choices()}")
        source = _source(format, "format")
        ds = _load_local(path, split)
    if limit is not None:
        ds = ds.select(range(min(int(limit), len(ds))))
    return [source.to_record(row) for row in ds]
