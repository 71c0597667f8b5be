"""Ours vs PEFT benchmark: the task through run.py on a tiny model, and the pieces it relies on."""
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from experiments.benchmarks.lora import (VARIANTS, Variant, _family, load_yaml, make_batch, saved_activation_bytes,
                                   validate)
from experiments.core.config import ConfigError
from modules.hf_model import quantize_nf4_
from tests.conftest import ROOT

TINY = ROOT / "conf" / "benchmark" / "cpu_tiny.yaml"


def _tiny(**overrides):
    b = load_yaml(TINY)
    for key, value in overrides.items():
        OmegaConf.update(b, key, value)
    return b


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_benchmark_task_writes_json_with_every_variant(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    args = ["task=benchmark", "benchmark=cpu_tiny", "benchmark.steps=2", "benchmark.warmup=1",
            "benchmark.eval_repeats=1", "benchmark.eval_ranks=[1,4,8]", "benchmark.seq_len=32",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "benchmark.json").read_text())
    assert set(result["variants"]) == set(VARIANTS)
    for name, v in result["variants"].items():
        assert len(v["step_s_all"]) == 2 and v["step_s_median"] > 0 and v["tokens_per_s"] > 0, name
        assert v["peak_mib"] > 0 and v["peak_rss_mib"] > 0 and v["saved_activations_mib"] > 0, name
        assert v["peak_source"] == "live tensors (torch memory profiler)", name
        assert v["peak_mib"] > v["model_mib"] > 0, name
        # r_max 8 x sum(d_in + d_out) over q, k, v, o, gate, up, down (d 64, kv 32, mlp 128) x 2 layers
        assert v["trainable_params"] == 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192) * 2, name
    assert result["variants"]["ours_fixed"]["mean_rank"] == 8
    assert 1 <= result["variants"]["ours_dynamic"]["mean_rank"] <= 8
    assert set(result["ratios"]) == {"ours_fixed/peft_lora", "ours_dynamic/peft_lora", "ours_nf4_fixed/peft_qlora",
                                     "ours_nf4_dynamic/peft_qlora"}
    for ratio in result["ratios"].values():
        assert ratio["step_time"] > 0 and ratio["step_time_paired"] > 0 and ratio["peak_rss"] > 0
        assert ratio["saved_activations"] == pytest.approx(1.0, abs=0.05)  # same math, same saved tensors
    for pair in ("ours_fixed/peft_lora", "ours_nf4_fixed/peft_qlora"):  # exact, load-independent measures
        assert result["ratios"][pair]["peak_memory"] <= 1.0 and result["ratios"][pair]["saved_activations"] <= 1.0
    for kind in ("base", "nf4"):
        e = result["eval_all_ranks"][kind]
        assert e["ours_s"] > 0 and e["peft_s"] > 0 and e["ratio"] > 0
    assert result["setup"]["eval_ranks"] == [1, 4, 8] and result["setup"]["batch_size"] == 4
    assert (run_dir / "benchmark.md").read_text().startswith("Benchmark: random:llama on cpu")
    assert "| ours_fixed/peft_lora |" in proc.stdout


def test_invalid_benchmark_config_is_one_clear_error():
    with pytest.raises(ConfigError, match="benchmark.variants|valid choices are ours_fixed"):
        validate(_tiny(variants=["ours_fixed", "nope"]))
    with pytest.raises(ConfigError, match="build"):
        validate(_tiny(build="disk"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            validate(_tiny(device="cuda"))


LORA_BENCHMARKS = sorted(p.stem for p in (ROOT / "conf" / "benchmark").glob("*.yaml")
                         if OmegaConf.load(p).get("kind", "lora") == "lora")


@pytest.mark.parametrize("name", LORA_BENCHMARKS)
def test_every_lora_benchmark_config_validates(name):
    b = load_yaml(ROOT / "conf" / "benchmark" / f"{name}.yaml")
    assert set(b.variants) <= set(VARIANTS) and "peft_qlora" in b.variants and b.model.targets
    if str(b.device).startswith("cuda") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            validate(b)
    else:
        validate(b)


def test_in_memory_nf4_equals_transformers_nf4_load(cache):
    """build=direct (GPU: no checkpoint on disk) quantizes exactly as from_pretrained + BitsAndBytesConfig."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from modules.hf_model import materialize_random

    b = _tiny()
    rc = OmegaConf.to_container(b.model.random_config)
    folder = materialize_random("llama", rc, seed=0)
    loaded = _family(b, "ours", True, _probe()).model  # saved weights through BitsAndBytesConfig
    fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    direct = quantize_nf4_(fp32, torch.float32, double_quant=True)
    import bitsandbytes as bnb

    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in direct.modules()) == 14
    assert not isinstance(direct.lm_head, bnb.nn.Linear4bit)
    ids = torch.randint(0, 260, (2, 16), generator=torch.Generator().manual_seed(0))
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(direct.eval()(ids).logits, loaded(ids).logits)
    assert AutoConfig.from_pretrained(folder).hidden_size == 64


def _probe():
    from experiments.benchmarks.lora import MemoryProbe

    return MemoryProbe("cpu")


def test_ours_saves_no_more_activations_than_peft(cache):
    """The exact (load-independent) memory claim: at rank r_max our layer keeps what PEFT's keeps."""
    b = _tiny(dropout=0.05)
    probe = _probe()
    for nf4 in (False, True):
        ours, peft = _family(b, "ours", nf4, probe), _family(b, "peft", nf4, probe)
        batch = make_batch(b, 260, "cpu")
        mine = saved_activation_bytes(Variant("ours_fixed", ours, "fixed"), batch)
        theirs = saved_activation_bytes(Variant("peft", peft, "fixed"), batch)
        assert 0 < mine <= theirs
