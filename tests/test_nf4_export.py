"""QDyLoRA's promise on the QLoRA base: a rank-b adapter exported from our NF4 model loads in plain PEFT on
a fresh NF4 base (loaded the way users load it) and gives our logits and our evaluation loss.

The fp32 counterpart is tests/test_nested_lora.py::test_exported_rank_loads_in_plain_peft_with_identical_logits.
"""
import types

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from modules.adapters.nested_lora import export_peft_adapter, inject_nested_lora, lora_layers, set_rank
from tests.conftest import LORA_TARGETS, ROOT

pytest.importorskip("bitsandbytes")
R_MAX = 8


def _nf4_base():
    """The tiny random llama of model=tiny_llama, NF4 + double quant from conf/quantization/nf4.yaml,
    through load_causal_lm as experiments/paradigms/lm.py builds it (fp32 compute on the CPU)."""
    from experiments.core.config import instantiate
    from modules.hf_model import load_causal_lm

    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_llama.yaml")
    quant = instantiate(OmegaConf.load(ROOT / "conf" / "quantization" / "nf4.yaml").config)
    model, _ = load_causal_lm(model_cfg.name_or_path, model_cfg.dtype, quant,
                              random_config=OmegaConf.to_container(model_cfg.random_config))
    return model.eval()


def _batch():
    """Two sequences: prompt tokens and right padding carry label -100, as the data modules make them."""
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_exported_ranks_on_an_nf4_base_reproduce_our_logits_and_loss_in_plain_peft(tmp_path, monkeypatch):
    import bitsandbytes as bnb
    from peft import PeftModel

    from modules.lm_module import NestedCausalLM

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ours = _nf4_base()
    inject_nested_lora(ours, LORA_TARGETS, r_max=R_MAX, alpha=16)
    torch.manual_seed(0)
    for _, layer in lora_layers(ours):
        assert isinstance(layer.base_layer, bnb.nn.Linear4bit)
        nn.init.normal_(layer.lora_B, std=0.2)  # non-zero, so the adapter moves the logits
    batch = _batch()
    our_loss = NestedCausalLM.loss  # the loss our grid evaluation logs (val/test loss@rank=b); uses .model only
    for b in (1, 2, R_MAX):
        set_rank(ours, b)
        with torch.no_grad():
            expected = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            expected_loss = our_loss(types.SimpleNamespace(model=ours), batch)
        folder = export_peft_adapter(ours, b, tmp_path / f"rank_{b}")
        peft_model = PeftModel.from_pretrained(_nf4_base(), folder).eval()
        assert peft_model.peft_config["default"].r == b
        assert isinstance(peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
        with torch.no_grad():
            got = peft_model(**batch)
            with peft_model.disable_adapter():
                base = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert (expected - base).abs().max() > 1e-2  # the adapter matters at this rank
        # same NF4 codes, same fp32 dequantize-and-matmul; only the low-rank path's op order differs
        torch.testing.assert_close(got.logits, expected, atol=1e-5, rtol=0)
        assert got.loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)  # HF's loss == ours
