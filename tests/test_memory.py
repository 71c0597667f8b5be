"""The memory estimate: exact counts on the meta device, the NF4 byte formula against bitsandbytes,
the does-not-fit error, and the paper's models (calibrated against the H200 reference figures in docs/memory.md)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from experiments.core.config import ConfigError
from experiments.core.estimate import (GIB, KNOWN_CONFIGS, check_fits, count_model, estimate, load_config, nf4_bytes)
from modules.adapters.nested_lora import inject_nested_lora
from tests.conftest import LORA_TARGETS, ROOT, tiny_llama_config

TINY_RANDOM = dict(vocab_size=300, hidden_size=80, intermediate_size=150, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _cfg(**overrides):
    """A root config as Hydra composes it (model / adapter / quantization / data / optimizer / trainer);
    the estimate node comes from conf/estimate/default.yaml, as in `python run.py task=estimate`."""
    cfg = OmegaConf.create({
        "model": {"name_or_path": "random:llama", "dtype": "bfloat16", "gradient_checkpointing": True,
                  "attn_implementation": "sdpa", "lora_targets": LORA_TARGETS, "random_config": TINY_RANDOM},
        "adapter": {"r_max": 8, "dropout": 0.0},
        "quantization": {"enabled": True, "config": {"bnb_4bit_use_double_quant": True}},
        "data": {"batch_size": 2, "max_length": 64},
        "optimizer": {"_target_": "torch.optim.AdamW"},
        "trainer": {"accelerator": "cpu"},
        "estimate": OmegaConf.load(ROOT / "conf" / "estimate" / "default.yaml"),
    })
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


# --- exact counts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("r_max", [1, 4])
def test_counts_on_meta_equal_a_real_instantiated_model(r_max):
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    counts = count_model(config, LORA_TARGETS, r_max, quantized=True)
    model = LlamaForCausalLM(config)
    linear_numel = sum(m.weight.numel() for n, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and n != "lm_head")
    inject_nested_lora(model, LORA_TARGETS, r_max, alpha=16)
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts.base_params == base
    assert counts.adapter_params == adapter == r_max * sum(  # A: r x d_in, B: d_out x r
        m.in_features + m.out_features for m in model.modules() if hasattr(m, "lora_A"))
    assert sum(counts.quantized_numels) == linear_numel  # every linear but lm_head
    assert counts.nonquant_params == base - linear_numel
    assert len(counts.layer_linears) == 7 and all(adapted for *_, adapted in counts.layer_linears)
    assert counts.n_layers == 2 and counts.hidden == 64 and counts.vocab == 260


def test_tied_embeddings_counted_once_and_falcon_linear_flagged():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("falcon", vocab_size=300, hidden_size=64, num_attention_heads=8, num_kv_heads=2,
                                  num_hidden_layers=2, new_decoder_architecture=True, parallel_attn=True,
                                  bias=False, alibi=False)
    targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    counts = count_model(config, targets, 4, quantized=True)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.transformer.word_embeddings.weight
    assert counts.base_params == sum(p.numel() for p in model.parameters())  # tied weight once
    # transformers (5.x) quantizes only exact nn.Linear: Falcon's own subclass would stay unquantized
    assert counts.unconverted_subclasses == ["FalconLinear"]


# --- NF4 storage ------------------------------------------------------------------------------------
def _stored_bytes(layer) -> int:
    """Every tensor bitsandbytes keeps for one Linear4bit weight (packed codes + quantization state)."""
    qs = layer.weight.quant_state
    tensors = [layer.weight.data, qs.absmax, qs.code, qs.offset]
    if qs.nested:
        tensors += [qs.state2.absmax, qs.state2.code]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_formula_matches_bitsandbytes_storage(tmp_path, monkeypatch, double_quant):
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    from modules.hf_model import load_causal_lm

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                               bnb_4bit_compute_dtype=torch.float32)
    model, _ = load_causal_lm("random:llama", "float32", quant, random_config=TINY_RANDOM)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14
    for layer in layers:  # 80 x 150 = 12000 weights: 187.5 blocks of 64, so the last block is partial
        n = layer.in_features * layer.out_features
        assert nf4_bytes(n, 64, double_quant) == _stored_bytes(layer)
    # and the whole base as the estimate counts it (same config, meta device) vs the loaded model
    config = load_config("random:llama", TINY_RANDOM)[0]
    counts = count_model(config, LORA_TARGETS, 4, quantized=True)
    actual = sum(_stored_bytes(m) for m in layers)
    predicted = sum(nf4_bytes(n, 64, double_quant) for n in counts.quantized_numels)
    assert predicted == actual
    nonquant = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lm_head" in n
                   or not isinstance(model.get_submodule(n.rpartition(".")[0]), bnb.nn.Linear4bit))
    assert counts.nonquant_params * 4 == nonquant


def test_nf4_bytes_per_weight():
    n = 64 * 256 * 1000  # whole blocks: 0.5 + 1/64 + 4/(64*256) bytes per weight + per-tensor constants
    assert nf4_bytes(n) == n // 2 + n // 64 + 4 * (n // 64 // 256) + 4 * (16 + 256 + 1)
    assert math.isclose(nf4_bytes(n) / n, 0.5 + 1 / 64 + 4 / (64 * 256), rel_tol=1e-3)
    assert math.isclose(nf4_bytes(n, double_quant=False) / n, 0.5 + 4 / 64, rel_tol=1e-3)


# --- the check --------------------------------------------------------------------------------------
def test_does_not_fit_raises_one_clear_line():
    cfg = _cfg(**{"estimate.gpu_gib": 0.01})
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, force=True)
    msg = str(err.value)
    assert "\n" not in msg and "batch 2 x seq 64" in msg and "> budget estimate.gpu_gib=0.01" in msg
    assert "reduce data.batch_size / data.max_length" in msg


def test_check_fits_auto_skips_cpu_training_and_passes_when_it_fits():
    assert check_fits(_cfg(**{"estimate.gpu_gib": 0.01})) is None  # trainer on the CPU: no GPU budget
    est = check_fits(_cfg(**{"trainer.accelerator": "gpu"}))
    assert est is not None and est.fits and 0 < est.total_gib < 31.7
    with pytest.raises(ConfigError, match="estimate.check"):
        check_fits(_cfg(**{"estimate.check": "maybe"}))


def test_estimate_reads_a_config_json_and_rejects_unknown_models(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", **TINY_RANDOM}))
    a = estimate(_cfg(**{"estimate.config": str(path)}))
    b = estimate(_cfg())
    assert a.counts.base_params == b.counts.base_params and a.total_bytes == b.total_bytes
    with pytest.raises(ConfigError, match="no model config available"):
        estimate(_cfg(**{"model.name_or_path": "nobody/no-such-model-xyz"}))


def test_activations_grow_with_batch_and_sequence_and_checkpointing_saves():
    small = estimate(_cfg(**{"data.batch_size": 1}))
    big = estimate(_cfg(**{"data.batch_size": 8}))
    no_ckpt = estimate(_cfg(**{"data.batch_size": 8, "model.gradient_checkpointing": False}))
    assert small.peak_bytes < big.peak_bytes
    assert big.components["NF4 weights (+ quantization constants)"] == small.components[
        "NF4 weights (+ quantization constants)"]
    assert "activations: all layers" in no_ckpt.components
    unquantized = estimate(_cfg(**{"quantization.enabled": False}))
    assert unquantized.components["base weights"] > 3 * small.components["NF4 weights (+ quantization constants)"]


# --- the paper's models -------------------------------------------------------------------------------
def _paper(name, batch, seq, r_max, quantized=True, targets=None):
    model = KNOWN_CONFIGS[name]
    default_targets = (["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"] if model[0] == "falcon"
                       else LORA_TARGETS)
    return estimate(_cfg(**{"model.name_or_path": name, "model.random_config": None,
                            "model.lora_targets": targets or default_targets, "data.batch_size": batch,
                            "data.max_length": seq, "adapter.r_max": r_max, "quantization.enabled": quantized}))


def test_paper_models_are_finite_and_ordered():
    names = ["huggyllama/llama-7b", "meta-llama/Llama-2-7b-hf", "huggyllama/llama-13b",
             "meta-llama/Llama-2-13b-hf", "tiiuae/falcon-40b"]
    est = {n: _paper(n, 1, 512, 64) for n in names}
    params = {n: e.counts.base_params / 1e9 for n, e in est.items()}
    assert params["huggyllama/llama-7b"] == params["meta-llama/Llama-2-7b-hf"] == pytest.approx(6.74, abs=0.01)
    assert params["huggyllama/llama-13b"] == pytest.approx(13.02, abs=0.01)
    assert params["tiiuae/falcon-40b"] == pytest.approx(41.3, abs=0.05)
    totals = [est[n].total_gib for n in names]
    assert all(math.isfinite(t) and t > 0 for t in totals)
    assert totals[0] == pytest.approx(totals[1]) and totals[2] == pytest.approx(totals[3])
    assert totals[1] < totals[2] < totals[4]
    assert est["tiiuae/falcon-40b"].counts.adapter_params == 444_334_080  # reference: 444 M at r = 64


@pytest.mark.parametrize("name,batch,seq,r_max,quantized,peak_gib,base_gib", [
    # the H200 reference, measured with PEFT on an H200: peak = max_memory_allocated; base = the loaded weights
    ("tiiuae/falcon-40b", 1, 512, 64, True, 29.1, 20.6),
    ("tiiuae/falcon-40b", 1, 512, 8, True, 22.5, 20.7),
    ("meta-llama/Llama-2-7b-hf", 4, 1024, 64, True, 8.0, 3.7),
    ("meta-llama/Llama-2-7b-hf", 4, 1024, 64, False, 16.9, 12.6),
])
def test_estimate_is_calibrated_against_gpu_measurements(name, batch, seq, r_max, quantized, peak_gib, base_gib):
    est = _paper(name, batch, seq, r_max, quantized)
    weights = sum(v for k, v in est.components.items() if "weights" in k and "adapter" not in k) / GIB
    assert weights == pytest.approx(base_gib, rel=0.04)
    assert est.peak_gib == pytest.approx(peak_gib, rel=0.05)


def test_falcon_40b_dynamic_rank_64_fits_a_32gb_card_at_batch_1x512():
    # the paper's headline: our dynamic adapter allocates r_max = 64, so it costs a rank-64 LoRA's memory
    est = _paper("tiiuae/falcon-40b", 1, 512, 64)
    assert est.fits and est.total_gib < 31.7
    assert not _paper("tiiuae/falcon-40b", 4, 2048, 64).fits
    cfg = _cfg(**{"model.name_or_path": "tiiuae/falcon-40b", "model.random_config": None,
                  "model.lora_targets": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                  "data.batch_size": 4, "data.max_length": 2048, "adapter.r_max": 64})
    with pytest.raises(ConfigError, match="falcon-40b with batch 4 x seq 2048"):
        check_fits(cfg, force=True)


# --- through run.py -----------------------------------------------------------------------------------
def test_estimate_task_via_run_py(tmp_path):
    base = [sys.executable, str(ROOT / "run.py"), "task=estimate", "model=falcon_40b", "estimate=default",
            "estimate.batch_size=1", "estimate.seq_len=512", "estimate.r_max=64"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    ok = subprocess.run([*base, f"hydra.run.dir={tmp_path / 'ok'}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| NF4 weights (+ quantization constants) |" in ok.stdout and "fits:" in ok.stdout
    data = json.loads((tmp_path / "ok" / "estimate.json").read_text())
    assert data["fits"] and data["adapter_params"] == 444_334_080 and 25 < data["total_gib"] < 31.7
    bad = subprocess.run([*base, "estimate.batch_size=8", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    error = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "falcon-40b with batch 8 x seq 512" in error[0] and "GiB > budget" in error[0]
