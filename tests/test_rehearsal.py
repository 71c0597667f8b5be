"""Every full-scale preset rehearsed end to end on the CPU (rehearsal=tiny, docs/rehearsal.md).

A new preset under conf/experiment/<paper>/ (a name without "quick") is covered by adding it. Each run goes
train -> grid evaluation -> results table -> exports, in this process (no interpreter start per preset), on a
shrunk random model of the preset's architecture and the generated copy of its dataset read by the same loader.
"""
import csv
import json
import math
import os

import pytest

from experiments.scripts.rehearse import full_scale_presets

PRESETS = full_scale_presets()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache (random models, generated datasets, HF's datasets cache) for every rehearsal of the module."""
    from data.fixtures import MIRROR_ENV

    cache = tmp_path_factory.mktemp("rehearsal_cache")
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "HF_DATASETS_CACHE", MIRROR_ENV)}
    os.environ.update(XDG_CACHE_HOME=str(cache), HF_DATASETS_CACHE=str(cache / "hf_datasets"))
    yield cache
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _rehearse(preset, run_dir, *overrides):
    import torch

    from experiments.scripts.rehearse import run_preset

    threads = torch.get_num_threads()
    try:
        return run_preset(preset, run_dir, ("threads=1", *overrides))
    finally:
        torch.set_num_threads(threads)


def test_every_full_scale_preset_is_listed():
    assert "qdylora/llama2_13b_gsm8k" in PRESETS and "whisper/er_iemocap" in PRESETS
    assert not [p for p in PRESETS if "quick" in p] and len(PRESETS) >= 23


@pytest.mark.parametrize("preset", PRESETS)
def test_rehearsal_end_to_end(preset, shared_cache, tmp_path, capsys):
    run = tmp_path / "run"
    _rehearse(preset, run)
    out = capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["rehearsal"] == "tiny"
    info = json.loads((run / "run_info.json").read_text())["rehearsal"]
    assert info["name"] == "tiny" and info["caption"].startswith("REHEARSAL")
    assert (run / "results.md").read_text().startswith("REHEARSAL (tiny)")
    # every column of the run's table holds at least one finite number
    with (run / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    columns = [c for c in rows[0] if c != "submodel"]
    assert columns
    for column in columns:
        values, labels = [], []
        for row in rows:
            try:
                values.append(float(row[column]))
            except (TypeError, ValueError):
                labels += [row[column]] if row[column] else []
        if labels and not values:  # a text column (latency/device = cpu)
            continue
        assert any(math.isfinite(v) for v in values), f"{preset}: column {column} has no finite value"
    assert any(run.rglob("last.ckpt"))  # per probe for the speech paradigm
    if "soft/" in preset:  # SoFT's presets shard 13B over GPUs: named, not silently dropped
        assert "not rehearsed on CPU: fsdp" in out and info["notes"]
    if preset.startswith(("qdylora/", "soft/")):
        assert (run / "generations.jsonl").is_file()  # the eval grid's answers, as at full scale


def test_a_broken_preset_fails(shared_cache, tmp_path):
    """A wrong column name in a preset's data config stops its rehearsal (so CI catches it)."""
    with pytest.raises(Exception, match="no column 'picture'"):
        _rehearse("sortednet/vit_b16_cifar10", tmp_path / "run", "data.image_column=picture")


def test_fixtures_follow_cited_cards(shared_cache):
    """Every generated hub dataset names its card; columns and label sets are the ones the loaders read."""
    import datasets

    from data import fixtures

    root = fixtures.ensure_fixtures(["nyu-mll/glue", "uoft-cs/cifar100", "mandarjoshi/trivia_qa"])
    for spec in fixtures.HUB.values():
        assert spec.card == f"https://huggingface.co/datasets/{spec.dataset_id}"
    mnli = datasets.load_dataset(str(root / "nyu-mll/glue"), "mnli")
    assert set(mnli) == {"train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"}
    assert mnli["train"].features["label"].names == ["entailment", "neutral", "contradiction"]
    assert set(mnli["test_matched"]["label"]) == {-1}  # GLUE hides test labels
    cifar = datasets.load_dataset(str(root / "uoft-cs/cifar100"), split="train")
    assert cifar.features["fine_label"].num_classes == 100 and cifar.features["coarse_label"].num_classes == 20
    assert cifar[0]["img"].size == (32, 32)
    trivia = datasets.load_dataset(str(root / "mandarjoshi/trivia_qa"), "rc.nocontext", split="test")
    assert trivia[0]["answer"]["aliases"] == []  # the test split hides its answers


def test_hub_path_only_with_a_mirror(tmp_path, monkeypatch):
    from data.fixtures import MIRROR_ENV, hub_path

    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert hub_path("openai/gsm8k") == "openai/gsm8k"
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    assert hub_path("openai/gsm8k") == "openai/gsm8k"  # no copy there: the hub id
    (tmp_path / "openai/gsm8k").mkdir(parents=True)
    (tmp_path / "openai/gsm8k/README.md").write_text("---\n---\n")
    assert hub_path("openai/gsm8k") == str(tmp_path / "openai/gsm8k")


def test_shrunk_models_keep_the_class():
    from transformers import AutoConfig

    from modules.hf_model import ARCHITECTURES, shrunk_config

    classes = {"llama": "LlamaConfig", "falcon": "FalconConfig", "gpt2": "GPT2Config", "roberta": "RobertaConfig",
               "t5": "T5Config", "vit": "ViTConfig", "whisper": "WhisperConfig"}
    for arch in set(ARCHITECTURES.values()):
        config = AutoConfig.for_model(arch, **shrunk_config(arch, layers=3))
        assert type(config).__name__ == classes[arch]
    falcon = AutoConfig.for_model("falcon", **shrunk_config("falcon"))
    assert falcon.new_decoder_architecture and falcon.parallel_attn and falcon.num_kv_heads == 2


def test_time_estimate_matches_a_hand_computation(tmp_path):
    """task=estimate's time per phase for QDyLoRA LLaMA-2-13B on GSM8K, recomputed by hand."""
    from experiments.core.cost import cost_phases, split_rows
    from experiments.core.estimate import _estimate_node
    from experiments.scripts.rehearse import compose_run

    cfg = _estimate_node(compose_run("qdylora/llama2_13b_gsm8k", tmp_path, rehearsal="none"))
    n = 13.0e9
    phases, notes = cost_phases(cfg, n)
    train, gen = phases
    assert train.flops == 1875 * 4 * 4 * 512 * 6 * n  # steps x accumulation x batch x tokens x (2N + 2N + 2N recompute)
    assert abs(train.hours(989) - train.flops / (989e12 * 0.235) / 3600) < 1e-9
    assert split_rows("gsm8k", "train[:500]") == 500 and split_rows("gsm8k", "train[500:]") == 6973
    assert split_rows("alpaca", "train[95%:97%]") == 1040
    answers = min(500, 512) + min(1319, 1024)  # validation = train[:500] (limit 512), test (limit 1024)
    assert gen.flops == 7 * answers * 256 * 2 * n  # 7 ranks x answers x new tokens x 2N
    nf4 = 0.5 * 17 / 16
    assert abs(gen.efficiency - min(0.235, (2 * 8 / nf4) / (989 / 4.8))) < 1e-12
    assert not notes


def test_a_gpu_run_states_its_memory_and_time_before_it_loads(tmp_path, capsys):
    """The first lines of a GPU run: check_fits' estimate and the time per phase, the numbers task=estimate
    reports (its cost table is computed by the same cost_phases)."""
    from experiments.core.cost import cost_phases
    from experiments.core.estimate import _estimate_node, estimate
    from experiments.paradigms.lm import LMParadigm
    from experiments.scripts.rehearse import compose_run

    cfg = compose_run("qdylora/llama2_13b_gsm8k", tmp_path, ("trainer=gpu",), rehearsal="none")
    LMParadigm().check_resources(cfg)
    memory, time_line = capsys.readouterr().out.strip().splitlines()
    est = estimate(cfg)
    assert memory.startswith(f"memory estimate: peak {est.peak_gib:.1f} GiB, {est.total_gib:.1f} GiB with overhead")
    phases, _ = cost_phases(_estimate_node(cfg), est.counts.base_params)
    hours = [p.hours(989) for p in phases]
    assert time_line == (f"time estimate on NVIDIA H200: training {hours[0]:.2f} h, evaluation: generations "
                         f"{hours[1]:.2f} h; {sum(hours):.1f} GPU-hours (task=estimate for the table)")
    assert 1.0 < hours[0] < 2.0 and 0.05 < hours[1] < 0.3  # 1.43 h and 0.14 h (docs/rehearsal.md)


def test_a_rehearsal_writes_its_wandb_record_offline(shared_cache, tmp_path, monkeypatch):
    """logger=wandb on a rehearsed preset: the offline W&B record holds the run's summary (every metric of
    results.json) and its per-sub-model table, as a full-scale run would upload it (wandb sync)."""
    from tests.test_wandb_offline import _only, read_wandb

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no API key: offline by itself
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    _rehearse("krona/roberta_base_glue", run, "logger=wandb")
    results = json.loads((run / "results.json").read_text())
    logged = read_wandb(_only(run / "wandb", "offline-run-*/run-*.wandb"))
    summary = logged["summary"]
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers and all(summary[k] == pytest.approx(v) for k, v in numbers.items() if k in summary)
    assert [k for k in numbers if k.startswith("test/")] and all(k in summary for k in numbers if k.startswith("test/"))
    assert summary["results/submodels"]["_type"] == "table-file"
    assert logged["config"]["rehearsal"]["name"] == "tiny"  # the record says what it is


def test_soft_rehearsal_judges_each_exit_against_the_sft_rehearsal(shared_cache, tmp_path, capsys):
    """SoFT's paired protocol rehearsed: the SFT preset, then the sorted preset with the judge (PandaLM-7B,
    shrunk to a random LLaMA) comparing both runs' answers exit by exit."""
    sft = tmp_path / "sft"
    _rehearse("soft/llama2_13b_alpaca_sft", sft)
    sorted_run = tmp_path / "sorted"
    _rehearse("soft/llama2_13b_alpaca", sorted_run, f"judge.against={sft}")
    capsys.readouterr()
    results = json.loads((sorted_run / "results.json").read_text())
    scores = {k: v for k, v in results.items() if k.startswith("test/judge@")}
    assert scores and all(-1.0 <= v <= 1.0 for v in scores.values())  # (wins - losses) / total per exit
    info = json.loads((sorted_run / "run_info.json").read_text())["rehearsal"]
    assert info["replaced"]["judge"] == "WeOpenML/PandaLM-7B-v1"
    assert (sorted_run / "judge.jsonl").is_file()
