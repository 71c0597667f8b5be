import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.adapters.nested_lora import (NestedLoRALinear, adapter_state_dict, export_peft_adapter,
                                          inject_nested_lora, lora_layers, merged_state_dict, set_rank)
from tests.conftest import LORA_TARGETS


def _layer(r_max=8, alpha=16.0, scale="alpha/b", frozen=False):
    torch.manual_seed(0)
    layer = NestedLoRALinear(nn.Linear(12, 10), r_max, alpha, 0.0, scale, frozen)
    nn.init.normal_(layer.lora_B, std=0.5)  # non-zero so the adapter path matters
    return layer


@pytest.mark.parametrize("b", [1, 3, 8])
def test_rank_b_equals_plain_lora_from_slices(b):
    layer = _layer()
    layer.set_rank(b)
    x = torch.randn(5, 12)
    a, bm = layer.lora_A[:b].detach(), layer.lora_B[:, :b].detach()
    plain = layer.base_layer(x) + (16.0 / b) * (x @ a.T) @ bm.T  # rank-b LoRA, scale alpha/b
    torch.testing.assert_close(layer(x), plain, atol=1e-6, rtol=1e-6)


def test_scale_modes():
    assert _layer(scale="alpha/b").scale(4) == 4.0
    assert _layer(scale="alpha/r_max").scale(4) == 2.0
    assert _layer(scale="alpha/sqrt(b)").scale(4) == 8.0
    with pytest.raises(ValueError, match="choose one of"):
        _layer(scale="alpha")


def test_init_is_identity_and_a_is_kaiming():
    layer = NestedLoRALinear(nn.Linear(12, 10), 8, 16)
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # B = 0 -> no change at step 0
    bound = 1 / math.sqrt(12)  # kaiming_uniform(a=sqrt(5)) on fan_in 12
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound


def test_gradients_reach_only_the_active_slices():
    layer = _layer()
    layer.base_layer.requires_grad_(False)
    layer.set_rank(3)
    layer(torch.randn(4, 12)).pow(2).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert layer.lora_A.grad[:3].abs().sum() > 0 and layer.lora_B.grad[:, :3].abs().sum() > 0
    assert torch.all(layer.lora_A.grad[3:] == 0) and torch.all(layer.lora_B.grad[:, 3:] == 0)


def test_frozen_prefix_updates_only_component_b():
    layer = _layer(frozen=True).train()
    layer.set_rank(4)
    layer(torch.randn(4, 12)).pow(2).sum().backward()
    assert torch.all(layer.lora_A.grad[:3] == 0) and torch.all(layer.lora_B.grad[:, :3] == 0)
    assert layer.lora_A.grad[3].abs().sum() > 0 and layer.lora_B.grad[:, 3].abs().sum() > 0


def _matryoshka_layer(r_max=8, r_min=1, scale="alpha/b"):
    torch.manual_seed(0)
    layer = NestedLoRALinear(nn.Linear(12, 10), r_max, 16.0, 0.0, scale, False, matryoshka=True, r_min=r_min)
    nn.init.normal_(layer.lora_B, std=0.5)
    return layer.train()


@pytest.mark.parametrize("scale", ["alpha/b", "alpha/r_max", "alpha/sqrt(b)"])
@pytest.mark.parametrize("r_min", [1, 3])
def test_matryoshka_training_output_is_the_mean_of_the_nested_ranks(scale, r_min):
    layer = _matryoshka_layer(r_min=r_min, scale=scale)
    x = torch.randn(5, 12)
    out = layer(x)  # training mode, rank r_max: one forward through B diag(p) A
    layer.matryoshka = False  # the same layer as a plain nested LoRA at every training rank
    reference = []
    for b in range(r_min, 9):
        layer.set_rank(b)
        reference.append(layer(x))
    torch.testing.assert_close(out, torch.stack(reference).mean(0), atol=1e-6, rtol=1e-6)
    ranks = torch.arange(1, 9)
    expected_p = [sum(layer.scale(b) for b in range(max(i, r_min), 9)) / (9 - r_min) for i in ranks.tolist()]
    torch.testing.assert_close(layer.matryoshka_p, torch.tensor(expected_p), atol=1e-6, rtol=1e-6)


def test_matryoshka_gradients_reach_every_component_in_one_step():
    layer = _matryoshka_layer()
    layer.base_layer.requires_grad_(False)
    x = torch.randn(4, 12)
    layer(x).pow(2).sum().backward()
    assert torch.all(layer.lora_A.grad.abs().sum(1) > 0) and torch.all(layer.lora_B.grad.abs().sum(0) > 0)
    assert not layer.matryoshka_p.requires_grad and "matryoshka_p" not in layer.state_dict()  # fixed, not saved
    # contrast: one sampled rank b < r_max (DyLoRA's step) leaves the components above b without gradient
    layer.zero_grad()
    layer.set_rank(3)
    layer(x).pow(2).sum().backward()
    assert torch.all(layer.lora_A.grad[3:] == 0) and torch.all(layer.lora_B.grad[:, 3:] == 0)
    assert torch.all(layer.lora_A.grad[:3].abs().sum(1) > 0)


@pytest.mark.parametrize("b", [1, 4, 8])
def test_matryoshka_eval_and_other_ranks_are_the_plain_rank_b_lora(b):
    layer = _matryoshka_layer()
    x = torch.randn(5, 12)
    a, bm = layer.lora_A[:b].detach(), layer.lora_B[:, :b].detach()
    plain = layer.base_layer(x) + (16.0 / b) * (x @ a.T) @ bm.T
    layer.set_rank(b)
    torch.testing.assert_close(layer.eval()(x), plain, atol=1e-6, rtol=1e-6)  # grid evaluation: P dropped
    torch.testing.assert_close(layer.delta_weight(b), (16.0 / b) * bm @ a, atol=1e-6, rtol=1e-6)  # export/merge
    if b < 8:  # set_rank(b) in training mode too (only rank r_max is the Matryoshka mean)
        torch.testing.assert_close(layer.train()(x), plain, atol=1e-6, rtol=1e-6)


def test_matryoshka_rejects_the_frozen_prefix_and_a_bad_r_min():
    with pytest.raises(ValueError, match="frozen_prefix"):
        NestedLoRALinear(nn.Linear(12, 10), 8, 16, frozen_prefix=True, matryoshka=True)
    with pytest.raises(ValueError, match="r_min=9"):
        NestedLoRALinear(nn.Linear(12, 10), 8, 16, matryoshka=True, r_min=9)


def test_matryoshka_off_is_the_default_and_adds_nothing(tiny_llama):
    inject_nested_lora(tiny_llama, ["q_proj"], r_max=4, alpha=8)
    layer = tiny_llama.model.layers[0].self_attn.q_proj
    assert layer.matryoshka is False and not hasattr(layer, "matryoshka_p")


def test_inject_freezes_base_and_wraps_targets(tiny_llama):
    names = inject_nested_lora(tiny_llama, LORA_TARGETS, r_max=4, alpha=8)
    assert len(names) == 2 * 7
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert set(adapter_state_dict(tiny_llama)) == trainable
    with pytest.raises(ValueError, match="matched no linear layer"):
        inject_nested_lora(copy.deepcopy(tiny_llama), ["nope"], 4, 8)


def test_exported_rank_loads_in_plain_peft_with_identical_logits(tiny_llama, tmp_path):
    from peft import PeftModel

    base_state = copy.deepcopy(tiny_llama.state_dict())
    ours = tiny_llama
    inject_nested_lora(ours, LORA_TARGETS, r_max=8, alpha=16)
    for _, layer in lora_layers(ours):
        nn.init.normal_(layer.lora_B, std=0.2)
    x = torch.randint(0, 260, (2, 12))
    for b in (2, 5):
        set_rank(ours, b)
        expected = ours(x).logits
        export_peft_adapter(ours, b, tmp_path / f"r{b}")
        from transformers import LlamaForCausalLM

        fresh = LlamaForCausalLM(ours.config)
        fresh.load_state_dict(base_state)
        peft_model = PeftModel.from_pretrained(fresh, tmp_path / f"r{b}").eval()
        assert peft_model.peft_config["default"].r == b
        torch.testing.assert_close(peft_model(x).logits, expected, atol=1e-5, rtol=0)


def test_export_rejects_a_rank_above_r_max(tiny_llama, tmp_path):
    inject_nested_lora(tiny_llama, ["q_proj"], r_max=4, alpha=8)
    with pytest.raises(ValueError, match="outside 1..r_max=4"):
        export_peft_adapter(tiny_llama, 5, tmp_path)


def test_nf4_base_trains_on_cpu_and_loss_goes_down(tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    from modules.hf_model import load_causal_lm

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    cfg = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2)
    model, _ = load_causal_lm("random:llama", "float32", quant, random_config=cfg)
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    inject_nested_lora(model, LORA_TARGETS, r_max=4, alpha=8)
    assert isinstance(model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    x = torch.randint(0, 260, (4, 16))
    losses = []
    for step in range(15):
        set_rank(model, 1 + step % 4)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    set_rank(model, 4)
    assert model(input_ids=x, labels=x).loss.item() < losses[0] - 0.5


def test_merged_checkpoint_equals_the_adapter_at_that_rank(tiny_llama):
    from transformers import LlamaForCausalLM

    inject_nested_lora(tiny_llama, LORA_TARGETS, r_max=8, alpha=16)
    for _, layer in lora_layers(tiny_llama):
        nn.init.normal_(layer.lora_B, std=0.2)
    set_rank(tiny_llama, 3)
    x = torch.randint(0, 260, (2, 9))
    plain = LlamaForCausalLM(tiny_llama.config).eval()
    plain.load_state_dict(merged_state_dict(tiny_llama, 3))
    torch.testing.assert_close(plain(x).logits, tiny_llama(x).logits, atol=1e-5, rtol=0)
