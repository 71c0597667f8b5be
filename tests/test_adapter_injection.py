"""wrap_modules: the one module-replacement step behind every adapter's injection (LoRA, DyLoRA, KronA)."""
import pytest
import torch
from torch import nn

from modules.adapters import AdapterError, wrap_modules


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.q = nn.Linear(4, 4)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(4, 8)


class Wrapped(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base_layer = base
        self.extra = nn.Parameter(torch.zeros(1))


def test_wraps_the_named_leaves_freezes_the_rest_and_keeps_the_base():
    model = Model()
    q0 = model.blocks[0].q
    names = wrap_modules(model, ["q"], lambda m: isinstance(m, nn.Linear), lambda name, m: Wrapped(m))
    assert names == ["blocks.0.q", "blocks.1.q"]
    assert isinstance(model.blocks[0].q, Wrapped) and model.blocks[0].q.base_layer is q0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.0.q.extra", "blocks.1.q.extra"}  # wrapped after the freeze: only the adapter trains


def test_all_linear_skips_excluded_leaves_and_wraps_only_the_outermost_match():
    model = Model()
    names = wrap_modules(model, "all-linear", lambda m: isinstance(m, nn.Linear), lambda name, m: Wrapped(m))
    assert "lm_head" not in names and len(names) == 6  # q and the two mlp linears of each block
    blocks = wrap_modules(Model(), ["mlp"], lambda m: True, lambda name, m: Wrapped(m), kind="module")
    assert blocks == ["blocks.0.mlp", "blocks.1.mlp"]  # not also the linears inside them


def test_no_match_names_the_key_and_what_the_model_has():
    with pytest.raises(AdapterError, match=r"adapter.target_modules=\['v_proj'\] matched no linear layer; this model "
                                           r"has: \['0', '2', 'lm_head', 'q'\]"):
        wrap_modules(Model(), ["v_proj"], lambda m: isinstance(m, nn.Linear), lambda name, m: Wrapped(m))
