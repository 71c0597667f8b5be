"""SortedNet ViT: slicing is exact, nested, validated; HF weights load; counts; samplers."""
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from modules.sorted_vit import (SortedViT, SortedViTConfig, build_independent, copy_slices, count_flops,
                                count_params, load_hf_vit, submodel_slices)
from modules.submodel import (AllSampler, FixedSampler, SandwichSampler, SubModel, UniformSampler)

# head_dim 8 = width step; 4 blocks so a 4x4 depth x width grid exists
CFG = SortedViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=32, num_hidden_layers=4,
                      num_attention_heads=4, intermediate_size=64, num_labels=5)

SUBS = [
    SubModel.of(depth=2, width=16, heads=3, mlp=20),
    SubModel.of(depth=1, width=8, heads=1, mlp=1),
    SubModel.of(depth=3, width=24),  # heads=3, mlp=48 follow the width
    SubModel.of(depth=4, width=32, heads=2, mlp=64),
    SubModel.of(width=8, heads=4, mlp=64),  # attention wider than the residual stream
    SubModel.of(mlp=7),
]


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = SortedViT(CFG).eval()
    with torch.no_grad():  # larger weights than the 0.02 init so mismatches would show
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.fixture
def pixels():
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def unsliced_forward(m: SortedViT, x: torch.Tensor) -> torch.Tensor:
    """The plain ViT forward through the modules' own __call__, no slicing anywhere."""
    e = m.vit.embeddings
    h = e.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
    h = torch.cat([e.cls_token.expand(len(x), -1, -1), h], 1) + e.position_embeddings
    for blk in m.vit.layers:
        a, (B, T, _) = blk.attention, h.shape
        y = blk.layernorm_before(h)
        q, k, v = (p(y).view(B, T, -1, a.head_dim).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        h = h + a.o_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, -1))
        h = h + blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.layernorm_after(h))))
    return m.classifier(m.vit.layernorm(h)[:, 0])


# --- exactness ---------------------------------------------------------------------------------

def test_full_submodel_equals_unsliced_model(model, pixels):
    expected = unsliced_forward(model, pixels)
    full = SubModel.of(depth=4, width=32, heads=4, mlp=64)
    for sub in (None, full, SubModel.of(), SubModel.of(width=32)):
        assert torch.equal(model(pixels, sub), expected)


@pytest.mark.parametrize("sub", SUBS, ids=lambda s: s.key or "full")
def test_sliced_equals_independent_small_model(model, pixels, sub):
    small = copy_slices(model, build_independent(CFG, sub), sub).eval()
    torch.testing.assert_close(model(pixels, sub), small(pixels), atol=1e-5, rtol=1e-5)


def test_independent_model_has_the_subnetwork_shape():
    small = build_independent(CFG, SubModel.of(depth=2, width=16, heads=3, mlp=20))
    c = small.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, c.head_dim) == \
        (2, 16, 3, 20, 8)


def test_slicing_copies_no_weights(model):
    sub = SUBS[0]
    params = dict(model.named_parameters())
    for name, index in submodel_slices(model, sub).items():
        assert params[name][index].data_ptr() == params[name].data_ptr()  # a view at offset 0


@pytest.mark.parametrize("sub", SUBS[:3], ids=lambda s: s.key)
def test_backward_touches_only_the_slice(model, pixels, sub):
    model.train()
    model(pixels, sub).square().sum().backward()
    slices = submodel_slices(model, sub)
    for name, p in model.named_parameters():
        if name not in slices:
            assert p.grad is None or not p.grad.any(), name
            continue
        inside = torch.zeros_like(p, dtype=torch.bool)
        inside[slices[name]] = True
        assert not p.grad[~inside].any(), name
        assert p.grad[inside].any(), name


def test_set_submodel_and_nested_setters_switch_the_forward(model, pixels):
    sub = SUBS[0]
    expected = model(pixels, sub)
    model.set_submodel(sub)
    assert torch.equal(model(pixels), expected)
    model.set_submodel(None)
    assert torch.equal(model(pixels), unsliced_forward(model, pixels))

    nested = model.nested({"depth": [1, 2, 4], "width": [8, 16, 32], "heads": [1, 3, 4], "mlp": [20, 64]})
    nested.apply(sub)
    assert torch.equal(model(pixels), expected)
    assert len(nested.space) == 54


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, words", [
    (SubModel.of(width=12), ["width=12", "[8, 16, 24, 32]", "multiples of"]),
    (SubModel.of(width=40), ["width=40"]),
    (SubModel.of(depth=5), ["depth=5", "[1, 2, 3, 4]"]),
    (SubModel.of(depth=0), ["depth=0"]),
    (SubModel.of(heads=5), ["heads=5", "[1, 2, 3, 4]"]),
    (SubModel.of(mlp=65), ["mlp=65", "1..64"]),
    (SubModel.of(rank=4), ["'rank'", "depth, width, heads, mlp"]),
])
def test_bad_submodels_raise_one_clear_line(model, pixels, bad, words):
    for call in (lambda: model(pixels, bad), lambda: model.set_submodel(bad),
                 lambda: build_independent(CFG, bad), lambda: count_params(model, bad)):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg


def test_bad_grids_raise(model):
    with pytest.raises(ValueError, match=r"axis 'width' is empty; valid choices: \[8, 16, 24, 32\]"):
        model.nested({"depth": [1, 2], "width": []})
    with pytest.raises(ValueError, match="grid is empty"):
        model.space({})
    with pytest.raises(ValueError, match="width=20"):
        model.nested({"width": [8, 20]})
    with pytest.raises(ValueError, match="depth=5"):
        model.set_axis("depth", 5)


def test_config_errors():
    with pytest.raises(ValueError, match="num_attention_heads"):
        SortedViTConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        SortedViTConfig(hidden_act="swish2")
    with pytest.raises(ValueError, match="unknown model option"):
        SortedViTConfig.from_mapping({"hidden": 3})
    assert SortedViTConfig.from_mapping({"_target_": "x", "hidden_size": 64}).hidden_size == 64


def test_wrong_image_size_is_named(model):
    with pytest.raises(ValueError, match="model.image_size"):
        model(torch.randn(1, 3, 16, 16))


# --- HF weights --------------------------------------------------------------------------------

def test_load_hf_vit_gives_hf_logits(pixels):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    hf_cfg = ViTConfig(image_size=8, patch_size=2, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=37, num_labels=5, attn_implementation="eager")
    hf = ViTForImageClassification(hf_cfg).eval()
    ours = load_hf_vit(hf).eval()
    with torch.no_grad():
        expected = hf(pixel_values=pixels).logits
        torch.testing.assert_close(ours(pixels), expected, atol=1e-5, rtol=1e-5)
    assert ours.config.intermediate_size == 37 and ours.config.layer_norm_eps == hf_cfg.layer_norm_eps
    # the pretrained model nests like any other: width 16 keeps 2 heads and floor(37 * 16 / 32) = 18 units
    assert ours.resolve(SubModel.of(width=16)) == (2, 16, 2, 18)


# --- counts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", SUBS + [SubModel.of()], ids=lambda s: s.key or "full")
def test_param_count_equals_independent_model(model, sub):
    small = build_independent(CFG, sub)
    assert count_params(model, sub) == sum(p.numel() for p in small.parameters())


def test_full_param_count_is_the_model(model):
    assert count_params(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("sub", SUBS + [SubModel.of()], ids=lambda s: s.key or "full")
def test_flops_match_torch_flop_counter(sub, monkeypatch):
    # torch counts 2 FLOPs per multiply-add of conv, linear and matmul; its fused CPU attention kernel
    # is not counted, so attention runs as the two plain matmuls here
    def math_attention(q, k, v, dropout_p=0.0):
        return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v

    monkeypatch.setattr(F, "scaled_dot_product_attention", math_attention)
    small = build_independent(CFG, sub).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        small(torch.randn(1, 3, 8, 8))
    assert 2 * count_flops(SortedViT(CFG), sub) == counter.get_total_flops()


def test_flops_grow_with_every_axis(model):
    base = count_flops(model, SubModel.of(depth=2, width=16, heads=2, mlp=32))
    for bigger in (dict(depth=3, width=16, heads=2, mlp=32), dict(depth=2, width=24, heads=2, mlp=32),
                   dict(depth=2, width=16, heads=3, mlp=32), dict(depth=2, width=16, heads=2, mlp=33)):
        assert count_flops(model, SubModel.of(bigger)) > base
    assert count_flops(model, None, image_size=16) > count_flops(model)


# --- samplers over a ViT space -----------------------------------------------------------------

GRID = {"depth": [1, 2, 3, 4], "width": [8, 16, 24, 32]}


def test_uniform_sampler_is_uniform_over_the_4x4_grid(model):
    space = model.space(GRID)
    sampler = UniformSampler(space, seed=0)
    draws = [sub for step in range(2000) for sub in sampler.submodels(step)]
    counts = Counter(sub.key for sub in draws)
    assert set(counts) == {sub.key for sub in space.grid()}
    # expected 125 per cell, binomial std ~10.8: 4 std
    assert all(abs(c - 125) <= 45 for c in counts.values()), counts
    assert sampler.submodels(7) == UniformSampler(space, seed=0).submodels(7)  # deterministic per step


def test_sandwich_fixed_and_all_samplers(model, pixels):
    space = model.space(GRID)
    largest, smallest = SubModel.of(depth=4, width=32), SubModel.of(depth=1, width=8)
    sandwich = SandwichSampler(space, seed=3, num_random=2)
    for step in range(200):
        subs = sandwich.submodels(step)
        assert subs[:2] == [largest, smallest] and len(subs) == 4 and all(s in space for s in subs)
    assert FixedSampler(space).submodels(5) == [largest]
    assert len(AllSampler(space).submodels(0)) == 16
    for sub in sandwich.submodels(0):  # every drawn sub-model runs
        assert model(pixels, sub).shape == (4, 5)
