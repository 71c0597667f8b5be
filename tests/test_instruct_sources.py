"""Every source's row->record conversion on rows written in its real Hub column format to local
files (jsonl, json, parquet, save_to_disk). Nothing here touches the Hub."""
import json

import datasets
import pytest

from data import instruct_sources
from data.instruct_sources import SOURCES, load_records


def _write(rows, tmp_path, kind="jsonl"):
    if kind == "jsonl":
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(rows))
    elif kind == "parquet":
        path = tmp_path / "rows.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:  # a save_to_disk folder holding a DatasetDict
        path = tmp_path / "saved"
        datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return str(path)


def test_alpaca(tmp_path):
    rows = [
        {"instruction": "Give three tips for staying healthy.", "input": "",
         "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well.",
         "text": "Below is an instruction that describes a task. ..."},
        {"instruction": "Translate to French.", "input": "Good morning",
         "output": "Bonjour", "text": "Below is an instruction ..."},
    ]
    recs = load_records(_write(rows, tmp_path, "json"), format="alpaca")
    assert recs == [
        {"instruction": "Give three tips for staying healthy.", "input": "",
         "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well.",
         "answers": ["1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well."]},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "answers": ["Bonjour"]},
    ]


def test_oasst1_guanaco_first_turn(tmp_path):
    rows = [
        {"text": "### Human: What does the term \"monopsony\" mean in economics?### Assistant: A market "
                 "with a single buyer.### Human: Now explain it to a dog### Assistant: Woof, one buyer."},
        {"text": "### Human: ¿Qué hora es?### Assistant: No tengo acceso a la hora."},
    ]
    recs = load_records(_write(rows, tmp_path, "jsonl"), format="oasst1")
    assert recs[0] == {"instruction": "What does the term \"monopsony\" mean in economics?", "input": "",
                       "output": "A market with a single buyer.", "answers": ["A market with a single buyer."]}
    assert recs[1]["instruction"] == "¿Qué hora es?" and recs[1]["output"] == "No tengo acceso a la hora."


def test_oasst1_row_without_reply_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="Assistant"):
        load_records(_write([{"text": "### Human: hello"}], tmp_path), format="oasst1")


def test_self_instruct(tmp_path):
    rows = [
        {"prompt": "Make a list of 3 ways to improve study skills.\n\nOutput:",
         "completion": " 1. Make a schedule.\n2. Take breaks.\n3. Sleep.<|endoftext|>"},
        {"prompt": "Classify the sentiment.\nInput: I love it.\nOutput:", "completion": " Positive<|endoftext|>"},
    ]
    recs = load_records(_write(rows, tmp_path, "parquet"), format="self_instruct")
    assert recs[0] == {"instruction": "Make a list of 3 ways to improve study skills.\n\nOutput:", "input": "",
                       "output": "1. Make a schedule.\n2. Take breaks.\n3. Sleep.",
                       "answers": ["1. Make a schedule.\n2. Take breaks.\n3. Sleep."]}
    assert recs[1]["output"] == "Positive" and recs[1]["answers"] == ["Positive"]


def test_flan_v2(tmp_path):
    rows = [
        {"inputs": "Premise: A man is sleeping.\nHypothesis: A man is awake.\nDoes the premise entail the hypothesis?",
         "targets": "no", "task_source": "Flan2021", "task_name": "anli_r1", "template_type": "zs_opt"},
        {"inputs": "What is the capital of France?", "targets": "Paris",
         "task_source": "T0", "task_name": "web_questions", "template_type": "zs_noopt"},
    ]
    recs = load_records(_write(rows, tmp_path, "jsonl"), format="flan_v2")
    assert recs[0]["instruction"].startswith("Premise: A man is sleeping.") and recs[0]["output"] == "no"
    assert recs[1] == {"instruction": "What is the capital of France?", "input": "", "output": "Paris",
                       "answers": ["Paris"]}


def test_gsm8k_answer_is_the_final_number(tmp_path):
    rows = [
        {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
                     "in May. How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
                   "clips altogether in April and May.\n#### 72"},
        {"question": "A house costs $1,200 a month. What is the cost for a year?",
         "answer": "12 * 1200 = <<12*1200=14400>>14400\n#### 14,400"},
    ]
    recs = load_records(_write(rows, tmp_path, "parquet"), format="gsm8k")
    assert recs[0]["answers"] == ["72"] and recs[0]["output"].endswith("#### 72")
    assert recs[0]["instruction"].startswith("Natalia sold clips") and recs[0]["input"] == ""
    assert recs[1]["answers"] == ["14400"]


def _trivia_row(question, value, aliases):
    return {"question": question, "question_id": "tc_1", "question_source": "http://www.triviacountry.com/",
            "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
            "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                               "search_context": []},
            "answer": {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
                       "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                       "normalized_value": value.lower(), "type": "WikipediaEntity", "value": value}}


def test_triviaqa_answers_are_value_plus_aliases(tmp_path):
    rows = [_trivia_row("Which Lloyd Webber musical premiered in the US on 10 December 1993?", "Sunset Boulevard",
                        ["Sunset Blvd", "Sunset Boulevard", "West Sunset Boulevard"]),
            _trivia_row("Who was the man behind The Chipmunks?", "David Seville", ["David Seville"])]
    recs = load_records(_write(rows, tmp_path, "jsonl"), format="triviaqa")
    assert recs[0] == {"instruction": "Which Lloyd Webber musical premiered in the US on 10 December 1993?",
                       "input": "", "output": "Sunset Boulevard",
                       "answers": ["Sunset Boulevard", "Sunset Blvd", "West Sunset Boulevard"]}
    assert recs[1]["answers"] == ["David Seville"]


def test_webglm_references_become_numbered_input(tmp_path):
    rows = [
        {"question": "Why is the sky blue?",
         "answer": "Sunlight is scattered by air molecules, blue the most[1][2].",
         "references": ["Rayleigh scattering affects short wavelengths more. ", "Blue light scatters more."]},
        {"question": "What is NF4?", "answer": "A 4-bit data type[1].", "references": ["NF4 is a 4-bit type."]},
    ]
    recs = load_records(_write(rows, tmp_path, "saved"), split="test", format="webglm")
    assert recs[0] == {"instruction": "Why is the sky blue?",
                       "input": "[1] Rayleigh scattering affects short wavelengths more.\n[2] Blue light scatters more.",
                       "output": "Sunlight is scattered by air molecules, blue the most[1][2].",
                       "answers": ["Sunlight is scattered by air molecules, blue the most[1][2]."]}
    assert recs[1]["input"] == "[1] NF4 is a 4-bit type."


def test_mmlu_multiple_choice_records(tmp_path):
    rows = [
        {"question": "Find the degree for the given field extension Q(sqrt(2)) over Q.", "subject": "abstract_algebra",
         "choices": ["0", "4", "2", "6"], "answer": 2},
        {"question": "What is the largest planet?", "subject": "astronomy",
         "choices": ["Mars", "Jupiter", "Earth", "Venus"], "answer": 1},
    ]
    recs = load_records(_write(rows, tmp_path, "parquet"), format="mmlu")
    assert recs == [
        {"question": "Find the degree for the given field extension Q(sqrt(2)) over Q.",
         "choices": ["0", "4", "2", "6"], "label": 2, "subject": "abstract_algebra"},
        {"question": "What is the largest planet?", "choices": ["Mars", "Jupiter", "Earth", "Venus"],
         "label": 1, "subject": "astronomy"},
    ]


def test_every_source_is_covered_above():
    assert set(SOURCES) == {"alpaca", "oasst1", "self_instruct", "flan_v2", "gsm8k", "triviaqa", "webglm", "mmlu"}


def test_limit_keeps_first_rows(tmp_path):
    rows = [{"inputs": f"q{i}", "targets": f"a{i}"} for i in range(5)]
    recs = load_records(_write(rows, tmp_path), format="flan_v2", limit=2)
    assert [r["output"] for r in recs] == ["a0", "a1"]


def test_registry_name_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "1+1=2\n#### 2"}] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    recs = load_records("gsm8k", split="test", limit=1)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert recs == [{"instruction": "1+1?", "input": "", "output": "1+1=2\n#### 2", "answers": ["2"]}]


def test_errors_are_one_line_and_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="choose one of: alpaca, oasst1, self_instruct") as err:
        load_records("alpacca")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="needs format="):
        load_records(_write([{"inputs": "a", "targets": "b"}], tmp_path))
    with pytest.raises(ValueError, match="format='nope'.*choose one of"):
        load_records(_write([{"inputs": "a", "targets": "b"}], tmp_path), format="nope")
    with pytest.raises(ValueError, match="split='dev'.*choose one of: train, test"):
        load_records("gsm8k", split="dev")
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "missing.jsonl"), format="alpaca")
    with pytest.raises(ValueError, match="conflicts"):
        load_records("gsm8k", format="alpaca")
    saved = _write([{"inputs": "a", "targets": "b"}], tmp_path, "saved")
    with pytest.raises(ValueError, match="split='train' not in"):
        load_records(saved, format="flan_v2")


def test_registry_ids_and_configs():
    assert (SOURCES["mmlu"].dataset_id, SOURCES["mmlu"].config) == ("cais/mmlu", "all")
    assert (SOURCES["triviaqa"].dataset_id, SOURCES["triviaqa"].config) == ("mandarjoshi/trivia_qa", "rc.nocontext")
    assert instruct_sources.SOURCES["self_instruct"].config == "self_instruct"
