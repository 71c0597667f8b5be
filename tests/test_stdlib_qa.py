"""data/stdlib_qa.py: deterministic, disjoint, truthful splits; the JSON cache; local JSONL files."""
from __future__ import annotations

import importlib
import json
import random
import re
import sys

import pytest

from data import stdlib_qa
from data.stdlib_qa import build_stdlib_qa, load_jsonl_records

KEYS = ["instruction", "input", "output", "answers"]


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def splits():
    return stdlib_qa.generate_stdlib_qa()  # uncached, unshuffled


def _name(record: dict) -> str:
    return re.search(r"`([^`]+)`", record["instruction"]).group(1)


def _is_module_question(record: dict) -> bool:
    return record["instruction"].startswith("Which module")


def test_cache_path_is_keyed_by_python_version(tmp_cache):
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert stdlib_qa.cache_path() == tmp_cache / "efficient-transformers-lab" / "data" / f"stdlib_qa-{py}-v1.json"


def test_two_builds_are_identical_and_cached(tmp_cache):
    first = build_stdlib_qa(seed=0)
    assert stdlib_qa.cache_path().is_file()
    assert build_stdlib_qa(seed=0) == first  # from the cache
    stdlib_qa.cache_path().unlink()
    assert build_stdlib_qa(seed=0) == first  # rebuilt from scratch


def test_seed_only_shuffles_train():
    a, b = build_stdlib_qa(seed=0), build_stdlib_qa(seed=1)
    assert a["validation"] == b["validation"] and a["test"] == b["test"]
    assert a["train"] != b["train"]
    assert sorted(map(json.dumps, a["train"])) == sorted(map(json.dumps, b["train"]))


def test_records_have_the_instruction_format(splits):
    for record in (r for split in splits.values() for r in split):
        assert list(record) == KEYS and record["input"] == ""
        assert record["output"] in record["answers"] and record["output"].strip() == record["output"]


def test_sizes_are_sensible(splits):
    sizes = {k: len(v) for k, v in splits.items()}
    total = sum(sizes.values())
    assert 1000 <= total <= 5000, sizes
    assert 0.7 < sizes["train"] / total < 0.9 and sizes["validation"] > 100 and sizes["test"] > 100, sizes
    answers = [r["output"] for r in splits["test"] if _is_module_question(r)]
    top_share = max(answers.count(a) for a in set(answers)) / len(answers)
    assert top_share < 0.1  # answering one module everywhere must not score well


def test_splits_are_disjoint_by_question_and_by_object(splits):
    questions = {k: {r["instruction"] for r in v} for k, v in splits.items()}
    assert sum(map(len, questions.values())) == sum(map(len, splits.values()))  # no duplicate questions
    assert not (questions["train"] & questions["validation"] or questions["train"] & questions["test"]
                or questions["validation"] & questions["test"])
    # A held-out name never appears in training, not even under the other question family.
    train_names = {_name(r) for r in splits["train"] if _is_module_question(r)}
    assert not any(_name(r) in train_names for r in splits["test"] if _is_module_question(r))


def test_module_answers_really_define_the_name(splits):
    records = [r for v in splits.values() for r in v if _is_module_question(r)]
    for record in random.Random(0).sample(records, 200):
        name = _name(record)
        for answer in record["answers"]:
            assert hasattr(importlib.import_module(answer), name), (answer, name)


def test_doc_answers_are_members_with_that_docstring(splits):
    records = [r for v in splits.values() for r in v if not _is_module_question(r)]
    assert len(records) > 300
    for record in random.Random(0).sample(records, 100):
        module, doc = re.search(r'`([^`]+)` is documented as: "(.*)"\?$', record["instruction"]).groups()
        obj = getattr(importlib.import_module(module), record["output"])
        assert stdlib_qa.first_sentence(obj) == doc
        assert record["output"].lower() not in doc.lower()


def test_names_defined_in_two_listed_modules_are_skipped(splits):
    names = {_name(r) for v in splits.values() for r in v if _is_module_question(r)}
    assert not {"dump", "loads", "open", "escape"} & names  # json/pickle, io/codecs, html/re
    assert {"b64encode", "deque", "OrderedDict", "reduce"} <= names  # reduce: from _functools, counts as functools


def test_load_jsonl_records(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"instruction": "2+2?", "input": "", "output": "4", "answers": ["4", "four"]},
            {"instruction": "Capital of France?", "output": "Paris"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    records = load_jsonl_records(path)
    assert records[0] == rows[0]
    assert records[1] == {"instruction": "Capital of France?", "input": "", "output": "Paris", "answers": ["Paris"]}


def test_load_jsonl_records_errors_name_the_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl_records(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*output"):
        load_jsonl_records(bad)
