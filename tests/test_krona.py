import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.adapters.krona import (KronALinear, inject_krona, krona_layers, krona_state_dict, merged_state_dict,
                                    set_kron_rank)
from modules.kronecker import kron_matmul
from tests.conftest import LORA_TARGETS


def _randomize(layer: KronALinear, seed: int = 1) -> KronALinear:
    """Both factors non-zero, so the adapter path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.kron_A.copy_(torch.randn(layer.kron_A.shape, generator=g))
        layer.kron_B.copy_(torch.randn(layer.kron_B.shape, generator=g) * 0.1)
    return layer


def _mlp(d=16, hidden=32):
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))


@pytest.mark.parametrize("variant", ["krona", "krona_block", "krona_block_res"])
def test_zero_at_init_output_equals_base(variant):
    torch.manual_seed(0)
    base = nn.Linear(12, 10) if variant == "krona" else _mlp()
    layer = KronALinear(copy.deepcopy(base), factor=-1, r_max=3, scale=2.0, variant=variant)
    x = torch.randn(2, 5, base[0].in_features if variant != "krona" else 12)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    assert torch.all(layer.kron_B == 0) and layer.kron_A.abs().sum() > 0  # LoRA's choice: B starts at zero
    swapped = KronALinear(copy.deepcopy(base), r_max=3, variant=variant, init_zero="A")  # PEFT LoKr's choice
    assert torch.all(swapped.kron_A == 0) and swapped.kron_B.abs().sum() > 0
    torch.testing.assert_close(swapped(x), base(x), rtol=0, atol=0)


def test_forward_is_base_plus_scaled_kron_map():
    torch.manual_seed(0)
    layer = _randomize(KronALinear(nn.Linear(12, 10), a_shape=(2, 3), r_max=2, scale=0.5))
    assert layer.b_shape == (5, 4)
    x = torch.randn(3, 12)
    dw = sum(torch.kron(layer.kron_A[k], layer.kron_B[k]) for k in range(2)).detach()
    torch.testing.assert_close(layer(x), layer.base_layer(x) + 0.5 * F.linear(x, dw))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_kron_rank_uses_the_first_k_products(k):
    torch.manual_seed(0)
    layer = _randomize(KronALinear(nn.Linear(16, 16), factor=4, r_max=4, scale=1.5))
    layer.set_kron_rank(k)
    fresh = KronALinear(copy.deepcopy(layer.base_layer), factor=4, r_max=k, scale=1.5)
    with torch.no_grad():
        fresh.kron_A.copy_(layer.kron_A[:k])
        fresh.kron_B.copy_(layer.kron_B[:k])
    x = torch.randn(4, 16)
    out = layer(x)
    torch.testing.assert_close(out, fresh(x))
    A, B = layer.kron_A[:k].detach(), layer.kron_B[:k].detach()
    torch.testing.assert_close(out, layer.base_layer(x) + 1.5 * kron_matmul(x, A, B))
    layer.base_layer.requires_grad_(False)
    out.pow(2).sum().backward()
    assert layer.kron_A.grad[:k].abs().sum() > 0 and layer.kron_B.grad[:k].abs().sum() > 0
    assert torch.all(layer.kron_A.grad[k:] == 0) and torch.all(layer.kron_B.grad[k:] == 0)


def test_kron_rank_zero_is_the_base_and_bad_rank_raises():
    layer = _randomize(KronALinear(nn.Linear(16, 16), r_max=2, name="q_proj"))
    layer.set_kron_rank(0)
    x = torch.randn(2, 16)
    torch.testing.assert_close(layer(x), layer.base_layer(x))
    with pytest.raises(ValueError, match=r"q_proj: kron rank 3 outside 0\.\.r_max=2"):
        layer.set_kron_rank(3)


def test_merged_equals_unmerged_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(nf=10, nx=12)
    nn.init.normal_(conv.weight, std=0.2)
    for base in (nn.Linear(12, 10), conv):
        layer = _randomize(KronALinear(base, a_shape=(5, 3), r_max=2, scale=0.7))
        x = torch.randn(4, 12)
        before = layer(x)
        w0 = base.weight.detach().clone()
        layer.merge()
        assert layer.merged and not torch.equal(base.weight, w0)
        torch.testing.assert_close(layer(x), before)
        torch.testing.assert_close(layer.base_layer(x), before)  # the weight alone carries the adapter now
        layer.unmerge()
        torch.testing.assert_close(base.weight, w0)
        torch.testing.assert_close(layer(x), before)


def test_gradients_reach_only_the_adapter_factors(tiny_llama):
    names = inject_krona(tiny_llama, LORA_TARGETS, factor=-1, rank=2)
    assert len(names) == 2 * 7
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable and all(".kron_A" in n or ".kron_B" in n for n in trainable)
    ids = torch.randint(0, 260, (2, 8))
    tiny_llama(input_ids=ids, labels=ids).loss.backward()
    for n, p in tiny_llama.named_parameters():
        if ".kron_B" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        elif ".kron_A" in n:  # B = 0 at init, so dL/dA = 0 at step 0 (as LoRA's A)
            assert p.grad is not None and torch.all(p.grad == 0), n
        else:
            assert p.grad is None, n
    set_kron_rank(tiny_llama, 1)
    assert {layer.rank for _, layer in krona_layers(tiny_llama)} == {1}
    assert set(krona_state_dict(tiny_llama)) == {f"{n}.kron_{w}" for n in names for w in "AB"}


def test_merged_state_dict_loads_into_a_plain_model(tiny_llama):
    from transformers import LlamaForCausalLM

    plain = copy.deepcopy(tiny_llama)
    inject_krona(tiny_llama, ["q_proj", "down_proj"], factor=-1, rank=2, scale=0.5)
    for _, layer in krona_layers(tiny_llama):
        _randomize(layer)
    ids = torch.randint(0, 260, (2, 8))
    with torch.no_grad():
        adapted = tiny_llama(input_ids=ids).logits
    state = merged_state_dict(tiny_llama)
    assert set(state) == set(plain.state_dict())
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
    assert isinstance(plain, LlamaForCausalLM)


def test_gpt2_conv1d_injection_and_merge():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    plain = copy.deepcopy(model)
    names = inject_krona(model, ["c_attn", "c_fc"], factor=4)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]
    layer = model.get_submodule(names[0])
    assert (layer.in_features, layer.out_features, layer.a_shape, layer.b_shape) == (32, 96, (4, 4), (24, 8))
    for _, layer in krona_layers(model):
        _randomize(layer)
    ids = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    plain.load_state_dict(merged_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_block_variants_add_the_kron_map_and_the_residual(tiny_llama):
    names = inject_krona(tiny_llama, ["mlp"], variant="krona_block_res", factor=-1, scale=0.5, res_init=0.25)
    assert names == ["model.layers.0.mlp", "model.layers.1.mlp"]
    layer = _randomize(tiny_llama.get_submodule(names[0]))
    assert (layer.in_features, layer.out_features) == (64, 64)  # gate_proj's input, down_proj's output
    x = torch.randn(2, 3, 64)
    A, B = layer.kron_A.detach(), layer.kron_B.detach()
    expected = layer.base_layer(x) + 0.5 * kron_matmul(x, A, B) + 0.25 * x
    torch.testing.assert_close(layer(x), expected)
    layer(x).sum().backward()
    assert layer.kron_res_scale.grad is not None and layer.kron_res_scale.grad != 0
    assert all(p.grad is None for p in layer.base_layer.parameters())


def test_bad_inputs_raise_one_clear_message(tiny_llama):
    with pytest.raises(ValueError, match=r"^model\.layers\.0\.self_attn\.q_proj \(d_out=64, d_in=64\): "
                                         r"a_shape=\(3, 4\) does not divide"):
        inject_krona(copy.deepcopy(tiny_llama), ["q_proj"], a_shape=(3, 4))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj \(d_out=128, d_in=64\): a_shape=\(8, 8\) "
                                         r"x b_shape=\(8, 8\) gives \(64, 64\)"):
        inject_krona(copy.deepcopy(tiny_llama), ["gate_proj"], a_shape=(8, 8), b_shape=(8, 8))
    with pytest.raises(ValueError, match="matched no linear layer; this model has:"):
        inject_krona(copy.deepcopy(tiny_llama), ["query"])
    with pytest.raises(ValueError, match=r"adapter\.variant='kron' is not an option; valid choices: krona, "):
        inject_krona(copy.deepcopy(tiny_llama), ["q_proj"], variant="kron")
    inject_krona(tiny_llama, ["mlp"], variant="krona_block")
    with pytest.raises(ValueError, match=r"^model\.layers\.0\.mlp: adapter\.variant='krona_block' is not mergeable"):
        tiny_llama.model.layers[0].mlp.merge()
    with pytest.raises(ValueError, match="is not mergeable"):
        merged_state_dict(tiny_llama)


def _nf4_sequential(teacher: nn.Sequential) -> nn.Sequential:
    """The same maps as Linear4bit (NF4), quantized by .to('cpu') as bitsandbytes does on a CPU."""
    import bitsandbytes as bnb

    layers = []
    for m in teacher:
        if isinstance(m, nn.Linear):
            q = bnb.nn.Linear4bit(m.in_features, m.out_features, bias=True, compute_dtype=torch.float32,
                                  quant_type="nf4")
            q.load_state_dict(m.state_dict())
            q = q.to("cpu")
            q.support_avx512bf16_for_cpu = False  # else the eval-mode inference kernel drops the input gradient
            m = q
        layers.append(m)
    return nn.Sequential(*layers)


def test_krona_trains_on_an_nf4_base_on_the_cpu():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = _nf4_sequential(_mlp(16, 32))
    assert isinstance(model[0], bnb.nn.Linear4bit) and model[0].weight.dtype == torch.uint8
    x = torch.randn(64, 16)
    target = _mlp(16, 32)(x).detach()  # another network: the base alone cannot fit it
    with torch.no_grad():
        before = model(x)
    names = inject_krona(model, "all-linear", factor=4, rank=2, scale=1.0)
    assert names == ["0", "2"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), before, rtol=0, atol=0)  # zero at init, eval mode too
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(40):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert model[0].kron_A.grad.abs().sum() > 0  # the first layer learns through the 4-bit second one
    assert losses[-1] < 0.7 * losses[0], losses
    assert model[0].base_layer.weight.dtype == torch.uint8  # base never dequantized in place
    with pytest.raises(ValueError, match=r"^0: cannot merge into Linear4bit \(a quantized base\)"):
        model[0].merge()


def test_benchmark_smoke_at_tiny_sizes():
    from experiments.benchmarks.kronecker import benchmark_kronecker

    rows = benchmark_kronecker(dims=(64,), tokens=16, repeats=2, warmup=1, nf4=False, verbose=False)
    ours = [r for r in rows if r["impl"] == "KronA (ours)"]
    peer = [r for r in rows if r["impl"] == "PEFT LoKr"]
    assert ours and peer
    assert all(r["ms"] > 0 for r in ours + peer)
    assert ours[0]["a_shape"] == peer[0]["a_shape"] and ours[0]["params"] == peer[0]["params"]
    assert {r["impl"] for r in rows} >= {"KroneckerLinear", "nn.Linear"}


def test_benchmark_task_runs_the_kronecker_rows_through_run_py(tmp_path):
    """``task=benchmark benchmark=cpu_kronecker``: ours and PEFT LoKr measured in one process, written out."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=benchmark", "benchmark=cpu_kronecker",
                           "benchmark.dims=[64]", "benchmark.tokens=16", "benchmark.repeats=1", "benchmark.warmup=0",
                           "benchmark.nf4=false", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "run" / "benchmark.json").read_text())["rows"]
    impls = {(r["case"], r["impl"]) for r in rows}
    assert {("layer", "KronA (ours)"), ("layer", "PEFT LoKr"), ("dense vs kron", "nn.Linear")} <= impls
    assert all(r["ms"] > 0 for r in rows) and "| 64 |" in (tmp_path / "run" / "benchmark.md").read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=benchmark", "benchmark=cpu_kronecker",
                          "benchmark.kind=fft", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "benchmark.kind='fft' is not an option" in bad.stderr.strip().splitlines()[-1]
