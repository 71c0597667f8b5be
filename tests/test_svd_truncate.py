import math

import pytest
import torch
from torch import nn

from modules.adapters.nested_lora import NestedLoRALinear, inject_nested_lora, lora_layers, set_rank
from modules.adapters.svd_truncate import low_rank_svd, svd_truncate_, svd_truncate_layer_, truncation_error


def _trained_layer(d_in=12, d_out=10, r=6, alpha=16.0, scale="alpha/b", seed=0) -> NestedLoRALinear:
    torch.manual_seed(seed)
    layer = NestedLoRALinear(nn.Linear(d_in, d_out), r_max=r, alpha=alpha, scale=scale)
    with torch.no_grad():  # stands in for training: B is zero at init
        layer.lora_B.normal_()
    return layer.double()


def _best_rank_b(delta: torch.Tensor, b: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u[:, :b] @ torch.diag(s[:b]) @ vh[:b]


def test_low_rank_svd_matches_dense_svd():
    torch.manual_seed(1)
    b, a = torch.randn(9, 4, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    u, s, vh = low_rank_svd(b, a)
    assert torch.allclose(s, torch.linalg.svdvals(b @ a)[:4], atol=1e-10)
    assert torch.allclose(u @ torch.diag(s) @ vh, b @ a, atol=1e-10)
    assert torch.allclose(u.T @ u, torch.eye(4, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("scale", ["alpha/b", "alpha/r_max", "alpha/sqrt(b)"])
def test_full_rank_output_unchanged(scale):
    layer = _trained_layer(scale=scale)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    before, delta_before = layer(x), layer.delta_weight(6)
    svd_truncate_layer_(layer)
    assert layer.scale_mode == "alpha/r_max"
    assert torch.allclose(layer(x), before, atol=1e-10)
    assert torch.allclose(layer.delta_weight(6), delta_before, atol=1e-10)


@pytest.mark.parametrize("scale", ["alpha/b", "alpha/sqrt(b)"])
def test_every_rank_is_the_eckart_young_truncation(scale):
    layer = _trained_layer(scale=scale)
    full = layer.delta_weight(6).clone()
    sv = svd_truncate_layer_(layer)
    assert torch.allclose(sv.double(), torch.linalg.svdvals(full)[:6], atol=1e-5)
    for b in range(1, 7):
        approx = layer.delta_weight(b)
        assert torch.allclose(approx, _best_rank_b(full, b), atol=1e-9)
        err = torch.linalg.matrix_norm(full - approx).item()
        dropped = math.sqrt(sum(float(s) ** 2 for s in torch.linalg.svdvals(full)[b:]))
        assert err == pytest.approx(dropped, rel=1e-6, abs=1e-9)
        assert err == pytest.approx(truncation_error(sv, b), rel=1e-5, abs=1e-6)
    # the forward at rank b uses the same truncation
    x = torch.randn(4, 12, dtype=torch.float64)
    layer.set_rank(2)
    assert torch.allclose(layer(x), layer.base_layer(x) + x @ _best_rank_b(full, 2).T, atol=1e-9)


def test_rank_larger_than_layer_width_pads_with_zeros():
    layer = _trained_layer(d_in=3, d_out=5, r=4)
    full = layer.delta_weight(4).clone()
    sv = svd_truncate_layer_(layer)
    assert sv.shape == (4,) and sv[3] == 0
    assert torch.all(layer.lora_A[3] == 0) and torch.all(layer.lora_B[:, 3] == 0)
    assert torch.allclose(layer.delta_weight(3), full, atol=1e-10)


def test_float32_layer_keeps_dtype_and_output():
    layer = _trained_layer().float()
    x = torch.randn(2, 12)
    before = layer(x)
    svd_truncate_layer_(layer)
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32
    assert torch.allclose(layer(x), before, atol=1e-4)


def test_tiny_llama_after_injection():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    names = inject_nested_lora(model, "all-linear", r_max=8, alpha=16.0)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_(std=0.05)
    ids = torch.randint(0, 64, (2, 10))
    full_deltas = {n: l.delta_weight(8).detach().clone() for n, l in lora_layers(model)}
    with torch.no_grad():
        logits_before = model(ids).logits

    singular = svd_truncate_(model)
    assert set(singular) == set(names) and len(names) == 14  # 7 linears x 2 blocks
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, logits_before, atol=1e-4)
    for name, layer in lora_layers(model):
        for b in (1, 3, 8):
            err = torch.linalg.matrix_norm(full_deltas[name] - layer.delta_weight(b)).item()
            assert err == pytest.approx(truncation_error(singular[name], b), rel=1e-3, abs=1e-5)
    set_rank(model, 2)  # lower ranks still run
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_model_without_lora_layers_is_an_error():
    with pytest.raises(ValueError, match="inject_nested_lora"):
        svd_truncate_(nn.Sequential(nn.Linear(2, 2)))


def test_truncated_rank_exports_to_plain_peft(tmp_path):
    """The constant scale survives export: PEFT's lora_alpha / r reproduces alpha / r_max."""
    import copy

    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    from modules.adapters.nested_lora import export_peft_adapter

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    base = LlamaForCausalLM(cfg).eval()
    model = copy.deepcopy(base)
    inject_nested_lora(model, ["q_proj", "v_proj"], r_max=8, alpha=16.0)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_(std=0.05)
    svd_truncate_(model)
    set_rank(model, 3)
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        ours = model(ids).logits
    export_peft_adapter(model, 3, tmp_path / "rank3")
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "rank3")).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, ours, atol=1e-5)
