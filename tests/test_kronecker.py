import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.kronecker import (KroneckerEmbedding, KroneckerLinear, factor_shapes, kron_cost, kron_dense, kron_flops,
                               kron_matmul, kron_params, nearest_kronecker, rearrange)

SHAPES = [  # (a_out, a_in, b_out, b_in, r): square, non-square, one-sized factors, several products
    (3, 4, 5, 2, 1), (2, 6, 7, 3, 1), (4, 4, 4, 4, 3), (1, 5, 6, 1, 2), (6, 1, 1, 7, 2), (5, 3, 2, 8, 4)]


def _kron_sum(A, B):
    return sum(torch.kron(A[k], B[k]) for k in range(A.shape[0]))


@pytest.mark.parametrize("order", ["auto", "a_first", "b_first"])
@pytest.mark.parametrize("a_out,a_in,b_out,b_in,r", SHAPES)
def test_kron_matmul_equals_linear_on_the_kron_product(order, a_out, a_in, b_out, b_in, r):
    g = torch.Generator().manual_seed(a_out * 100 + b_in)
    A = torch.randn(r, a_out, a_in, generator=g, dtype=torch.float64)
    B = torch.randn(r, b_out, b_in, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, a_in * b_in, generator=g, dtype=torch.float64)  # (B, T, C)
    y = kron_matmul(x, A, B, order)
    assert y.shape == (2, 3, a_out * b_out)
    torch.testing.assert_close(y, F.linear(x, _kron_sum(A, B)))
    torch.testing.assert_close(kron_dense(A, B), _kron_sum(A, B))


def test_kron_matmul_two_dim_factors_and_gradients():
    A = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 20, dtype=torch.float64, requires_grad=True)
    for order in ("a_first", "b_first"):
        assert torch.autograd.gradcheck(lambda x, A, B: kron_matmul(x, A, B, order), (x, A, B))
    ref = F.linear(x, torch.kron(A, B))
    torch.testing.assert_close(kron_matmul(x, A, B), ref)


def test_order_choice_is_the_cheaper_one():
    cost, order = kron_cost((64, 2), (2, 64))  # b_first: 2*2*(64+64)=512, a_first: 64*64*(2+2)=16384
    assert (cost, order) == (512, "b_first")
    assert kron_cost((2, 64), (64, 2))[1] == "a_first"
    assert kron_flops((64, 64), (64, 64), rank=1, tokens=3) == 2 * 3 * 64 * 64 * 128
    assert kron_params((64, 64), (64, 64), rank=2) == 2 * 2 * 64 * 64


def test_rearrangement_of_a_kron_product_is_rank_one():
    A, B = torch.randn(3, 4), torch.randn(5, 2)
    R = rearrange(torch.kron(A, B), (3, 4), (5, 2))
    torch.testing.assert_close(R, A.reshape(-1, 1) * B.reshape(1, -1))


def test_nearest_kronecker_recovers_an_exact_product_up_to_sign():
    A, B = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    W = torch.kron(A, B)
    A1, B1, err = nearest_kronecker(W, (3, 4), (5, 6), return_error=True)
    assert err < 1e-12
    torch.testing.assert_close(kron_dense(A1, B1), W)
    # each factor is the true one times a scalar c (sign and split of the norm), with c_A * c_B = 1
    c_a = (A1[0] * A).sum() / (A * A).sum()
    c_b = (B1[0] * B).sum() / (B * B).sum()
    torch.testing.assert_close(A1[0], c_a * A)
    torch.testing.assert_close(B1[0], c_b * B)
    torch.testing.assert_close(c_a * c_b, torch.tensor(1.0, dtype=torch.float64))


def test_nearest_kronecker_error_is_the_svd_tail_and_falls_with_rank():
    torch.manual_seed(0)
    W = torch.randn(12, 10, dtype=torch.float64)
    a, b = (3, 2), (4, 5)
    s = torch.linalg.svdvals(rearrange(W, a, b))
    errors = []
    for r in range(1, 7):  # limit min(3*2, 4*5) = 6
        A, B, err = nearest_kronecker(W, a, b, rank=r, return_error=True)
        measured = (torch.linalg.norm(W - kron_dense(A, B)) / torch.linalg.norm(W)).item()
        tail = (s[r:].pow(2).sum() / s.pow(2).sum()).sqrt().item()
        assert err == pytest.approx(tail, abs=1e-12) and measured == pytest.approx(tail, abs=1e-10)
        errors.append(err)
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-12  # full rank reproduces W
    torch.testing.assert_close(kron_dense(A, B), W)


def test_rank_above_the_svd_limit_raises():
    with pytest.raises(ValueError, match=r"rank=7 is outside 1\.\.6"):
        nearest_kronecker(torch.randn(12, 10), (3, 2), (4, 5), rank=7)


def test_factor_shapes_balanced_given_and_bad():
    assert factor_shapes(768, 768) == ((24, 24), (32, 32))  # largest divisor <= sqrt, A the smaller factor
    assert factor_shapes(4096, 1024) == ((64, 32), (64, 32))
    assert factor_shapes(128, 64, factor=4) == ((4, 4), (32, 16))
    assert factor_shapes(128, 64, a_shape=(8, 2)) == ((8, 2), (16, 32))
    assert factor_shapes(128, 64, b_shape=(8, 2)) == ((16, 32), (8, 2))
    with pytest.raises(ValueError, match=r"c_attn \(d_out=64, d_in=64\).*valid out sizes: \[1, 2, 4"):
        factor_shapes(64, 64, a_shape=(3, 4), name="c_attn")
    with pytest.raises(ValueError, match=r"^c_fc .*gives \(32, 64\); valid a_out"):
        factor_shapes(64, 64, a_shape=(4, 8), b_shape=(8, 8), name="c_fc")
    with pytest.raises(ValueError, match=r"wte: factor=5 does not divide 64; valid choices"):
        factor_shapes(64, 64, factor=5, name="wte")


def test_kronecker_linear_from_dense_full_rank_reproduces_the_layer():
    torch.manual_seed(0)
    dense = nn.Linear(12, 10).double()
    layer = KroneckerLinear.from_dense(dense, a_shape=(2, 3), b_shape=(5, 4), rank=6)  # limit min(6, 20)
    assert layer.approx_error < 1e-12
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x))
    torch.testing.assert_close(layer.weight, dense.weight)


def test_kronecker_linear_from_dense_rank_one_is_the_nearest_product():
    torch.manual_seed(0)
    dense = nn.Linear(16, 8, bias=False)
    layer = KroneckerLinear.from_dense(dense, factor=2)
    assert (layer.a_shape, layer.b_shape) == ((2, 2), (4, 8)) and layer.bias is None
    A, B = nearest_kronecker(dense.weight, (2, 2), (4, 8))
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), F.linear(x, torch.kron(A[0], B[0])))
    assert sum(p.numel() for p in layer.parameters()) == kron_params((2, 2), (4, 8))


def test_kronecker_linear_trains():
    torch.manual_seed(0)
    layer = KroneckerLinear(16, 12, rank=2)
    layer(torch.randn(4, 16)).pow(2).sum().backward()
    assert layer.A.grad.abs().sum() > 0 and layer.B.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


def test_conv1d_base_matches_linear_on_the_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(nf=10, nx=12).double()  # weight (in, out) = (12, 10)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.linear(x, conv.weight.T, conv.bias))
    layer = KroneckerLinear.from_dense(conv, a_shape=(2, 3), b_shape=(5, 4), rank=6)
    torch.testing.assert_close(layer(x), conv(x))


def test_kronecker_embedding_from_dense():
    torch.manual_seed(0)
    emb = nn.Embedding(11, 8).double()
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    full = KroneckerEmbedding.from_dense(emb, factor=2, rank=2)  # R(E) is (11*4, 2): rank 2 is exact
    assert full.approx_error < 1e-12
    torch.testing.assert_close(full(ids), emb(ids))
    torch.testing.assert_close(full.weight, emb.weight)
    one = KroneckerEmbedding.from_dense(emb, factor=2, rank=1)  # token i -> A[i] ⊗ b
    expected = torch.stack([torch.kron(one.A[0, i], one.B[0, 0]) for i in ids.flatten()]).view(2, 3, 8)
    torch.testing.assert_close(one(ids), expected)
    assert 0 < one.approx_error < 1
    with pytest.raises(ValueError, match="wte: factor=3 does not divide embedding_dim=8"):
        KroneckerEmbedding(11, 8, factor=3, name="wte")
