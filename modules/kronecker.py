"""Kronecker core shared by KronA (adapter) and KnGPT2 (compressed layers). Pure PyTorch.

A linear map W (d_out x d_in) with W = sum_k A_k ⊗ B_k,  A_k (a_out x a_in), B_k (b_out x b_in),
a_out * b_out = d_out and a_in * b_in = d_in, applied to x without ever building W:
x reshaped to X (a_in, b_in) (row-major, so x[i * b_in + j] = X[i, j]) gives

    y = sum_k A_k @ X @ B_k^T   reshaped to (a_out * b_out,)   ==   F.linear(x, sum_k torch.kron(A_k, B_k)).

Cost per token and product: a_in*b_out*(b_in + a_out) multiply-adds (B first) or a_out*b_in*(a_in + b_out)
(A first) instead of d_in*d_out. The nearest Kronecker product of a dense W (Van Loan & Pitsianis, 1993)
comes from the SVD of a rearrangement R(W) with one vectorised (b_out x b_in) block of W per row.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

Shape = tuple[int, int]
ORDERS = ("auto", "a_first", "b_first")


def _as_products(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_out, a_in) or (r, a_out, a_in) -> (r, a_out, a_in); the same for B."""
    A = A.unsqueeze(0) if A.dim() == 2 else A
    B = B.unsqueeze(0) if B.dim() == 2 else B
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != B.shape[0]:
        raise ValueError(f"factors must be (a_out, a_in) / (b_out, b_in) or (r, ...) with the same r; "
                         f"got A {tuple(A.shape)} and B {tuple(B.shape)}")
    return A, B


def kron_cost(a_shape: Shape, b_shape: Shape, order: str = "auto") -> tuple[int, str]:
    """Multiply-adds per token and per product of the reshape matmul, and the order that achieves it."""
    (a_out, a_in), (b_out, b_in) = a_shape, b_shape
    b_first = a_in * b_out * (b_in + a_out)  # X @ B^T, then A @ (.)
    a_first = a_out * b_in * (a_in + b_out)  # A @ X, then (.) @ B^T
    if order == "auto":
        order = "b_first" if b_first <= a_first else "a_first"
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not an option; valid choices: {', '.join(ORDERS)}")
    return (b_first if order == "b_first" else a_first), order


def kron_matmul(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, order: str = "auto") -> torch.Tensor:
    """y = x (sum_k A_k ⊗ B_k)^T for x (..., a_in*b_in); A (a_out, a_in) or (r, a_out, a_in), B alike.
    Never materialises the Kronecker product; ``order`` picks which factor multiplies first."""
    A, B = _as_products(A, B)
    r, a_out, a_in = A.shape
    _, b_out, b_in = B.shape
    if x.shape[-1] != a_in * b_in:
        raise ValueError(f"input has {x.shape[-1]} features; the factors expect a_in*b_in = {a_in}*{b_in}")
    lead = x.shape[:-1]
    X = x.reshape(-1, a_in, b_in)  # (N, a_in, b_in)
    n = X.shape[0]
    _, order = kron_cost((a_out, a_in), (b_out, b_in), order)
    if order == "b_first":
        Z = X @ B.reshape(r * b_out, b_in).T  # (N, a_in, r*b_out): one GEMM over all tokens and products
        if r > 1:  # bring the product axis next to a_in so one matmul sums over (k, i)
            Z = Z.view(n, a_in, r, b_out).permute(0, 2, 1, 3).reshape(n, r * a_in, b_out)
        y = A.permute(1, 0, 2).reshape(a_out, r * a_in) @ Z  # (N, a_out, b_out)
    else:
        Z = A.reshape(r * a_out, a_in) @ X  # (N, r*a_out, b_in)
        if r > 1:
            Z = Z.view(n, r, a_out, b_in).permute(0, 2, 1, 3)  # (N, a_out, r, b_in)
        Z = Z.reshape(n * a_out, r * b_in)
        y = Z @ B.permute(1, 0, 2).reshape(b_out, r * b_in).T  # (N*a_out, b_out)
    return y.reshape(*lead, a_out * b_out)


def kron_dense(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """sum_k kron(A_k, B_k) as a dense (a_out*b_out, a_in*b_in) matrix (merging, tests, export)."""
    A, B = _as_products(A, B)
    r, a_out, a_in = A.shape
    _, b_out, b_in = B.shape
    # W[(p, q), (i, j)] = sum_k A[k, p, i] B[k, q, j]
    return torch.einsum("kpi,kqj->pqij", A, B).reshape(a_out * b_out, a_in * b_in)


def rearrange(W: torch.Tensor, a_shape: Shape, b_shape: Shape) -> torch.Tensor:
    """R(W) (a_out*a_in, b_out*b_in): row (p, i) is block W[p*b_out:(p+1)*b_out, i*b_in:(i+1)*b_in]
    flattened, so R(A ⊗ B) = vec(A) vec(B)^T (rank one)."""
    (a_out, a_in), (b_out, b_in) = a_shape, b_shape
    return W.reshape(a_out, b_out, a_in, b_in).permute(0, 2, 1, 3).reshape(a_out * a_in, b_out * b_in)


def check_factor_shapes(d_out: int, d_in: int, a_shape: Sequence[int], b_shape: Sequence[int],
                        name: str = "layer") -> tuple[Shape, Shape]:
    """Validate a_out*b_out = d_out and a_in*b_in = d_in; one-line error naming the layer otherwise."""
    a_shape, b_shape = (int(a_shape[0]), int(a_shape[1])), (int(b_shape[0]), int(b_shape[1]))
    (a_out, a_in), (b_out, b_in) = a_shape, b_shape
    if a_out * b_out != d_out or a_in * b_in != d_in:
        raise ValueError(f"{name} (d_out={d_out}, d_in={d_in}): a_shape={a_shape} x b_shape={b_shape} gives "
                         f"({a_out * b_out}, {a_in * b_in}); valid a_out: {divisors(d_out)}, valid a_in: "
                         f"{divisors(d_in)} (b = d / a)")
    return a_shape, b_shape


def divisors(d: int) -> list[int]:
    return [m for m in range(1, d + 1) if d % m == 0]


def balanced_split(d: int, factor: int = -1, name: str = "layer") -> tuple[int, int]:
    """d = m * n. factor=-1: the largest divisor m <= sqrt(d), so m <= n and m + n is smallest (the split
    PEFT's LoKr makes by default). factor > 0: m = factor, which must divide d."""
    if factor is None or factor == -1:
        m = max(m for m in range(1, math.isqrt(d) + 1) if d % m == 0)
        return m, d // m
    if factor <= 0 or d % factor:
        raise ValueError(f"{name}: factor={factor} does not divide {d}; valid choices: -1 or one of {divisors(d)}")
    return factor, d // factor


def factor_shapes(d_out: int, d_in: int, factor: int = -1, a_shape: Sequence[int] | None = None,
                  b_shape: Sequence[int] | None = None, name: str = "layer") -> tuple[Shape, Shape]:
    """Factor shapes (a_shape, b_shape) for a (d_out x d_in) map. Given shapes are validated (one given,
    the other is derived); otherwise each side is split by ``balanced_split`` with A the smaller factor."""
    if a_shape is None and b_shape is not None:
        a_shape = _other_factor(d_out, d_in, b_shape, "b_shape", name)
    if b_shape is None and a_shape is not None:
        b_shape = _other_factor(d_out, d_in, a_shape, "a_shape", name)
    if a_shape is not None:
        return check_factor_shapes(d_out, d_in, a_shape, b_shape, name)
    a_out, b_out = balanced_split(d_out, factor, name)
    a_in, b_in = balanced_split(d_in, factor, name)
    return (a_out, a_in), (b_out, b_in)


def _other_factor(d_out: int, d_in: int, given: Sequence[int], key: str, name: str) -> Shape:
    if d_out % given[0] or d_in % given[1]:
        raise ValueError(f"{name} (d_out={d_out}, d_in={d_in}): {key}={tuple(given)} does not divide the layer; "
                         f"valid out sizes: {divisors(d_out)}, valid in sizes: {divisors(d_in)}")
    return d_out // given[0], d_in // given[1]


def kron_params(a_shape: Shape, b_shape: Shape, rank: int = 1) -> int:
    """Trainable numbers of r products (dense: a_out*b_out*a_in*b_in)."""
    return rank * (a_shape[0] * a_shape[1] + b_shape[0] * b_shape[1])


def kron_flops(a_shape: Shape, b_shape: Shape, rank: int = 1, tokens: int = 1) -> int:
    """Forward FLOPs (2 per multiply-add) of the reshape matmul in its cheaper order.
    Dense: 2 * tokens * d_in * d_out."""
    return 2 * tokens * rank * kron_cost(a_shape, b_shape)[0]


def nearest_kronecker(W: torch.Tensor, a_shape: Sequence[int], b_shape: Sequence[int], rank: int = 1,
                      return_error: bool = False, name: str = "weight"):
    """Best sum of ``rank`` Kronecker products in Frobenius norm (Van Loan-Pitsianis): SVD of R(W),
    A_k = sqrt(s_k) u_k, B_k = sqrt(s_k) v_k. Returns (A (r, a_out, a_in), B (r, b_out, b_in)) and, with
    ``return_error``, the relative error ||W - sum_k A_k ⊗ B_k||_F / ||W||_F = sqrt(tail energy of s)."""
    a_shape, b_shape = check_factor_shapes(W.shape[0], W.shape[1], a_shape, b_shape, name)
    limit = min(a_shape[0] * a_shape[1], b_shape[0] * b_shape[1])
    if not 1 <= rank <= limit:
        raise ValueError(f"{name}: rank={rank} is outside 1..{limit} (the SVD limit min(a_out*a_in, b_out*b_in) "
                         f"for a_shape={a_shape}, b_shape={b_shape})")
    R = rearrange(W.detach().to(torch.float64), a_shape, b_shape)  # float64: the error check is exact
    U, S, Vh = torch.linalg.svd(R, full_matrices=False)
    root = S[:rank].sqrt()
    A = (U[:, :rank] * root).T.reshape(rank, *a_shape).to(W.dtype)
    B = (Vh[:rank].T * root).T.reshape(rank, *b_shape).to(W.dtype)
    if not return_error:
        return A, B
    total = S.pow(2).sum()
    error = (S[rank:].pow(2).sum() / total).sqrt().item() if total > 0 else 0.0
    return A, B, error


INITS = ("nearest", "random")


def check_init(init: str, name: str = "layer") -> None:
    if init not in INITS:
        raise ValueError(f"{name}: init={init!r} is not an option; valid choices: {', '.join(INITS)}")


def _dense_weight(linear_or_weight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(d_out, d_in) weight and bias of an nn.Linear, transformers' Conv1D (stored (in, out)), or a tensor."""
    if isinstance(linear_or_weight, torch.Tensor):
        return linear_or_weight, None
    if isinstance(linear_or_weight, nn.Linear):
        if hasattr(linear_or_weight.weight, "quant_state"):
            raise ValueError(f"cannot decompose {type(linear_or_weight).__name__} (a quantized weight); "
                             f"decompose the float layer before quantizing")
        return linear_or_weight.weight, linear_or_weight.bias
    if is_conv1d(linear_or_weight):
        return linear_or_weight.weight.T, linear_or_weight.bias
    raise TypeError(f"expected nn.Linear, transformers Conv1D or a (d_out, d_in) tensor, "
                    f"got {type(linear_or_weight).__name__}")


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 Conv1D (weight stored (in, out)); matched by name so nothing imports transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class KroneckerLinear(nn.Module):
    """y = x (sum_{k<r} A_k ⊗ B_k)^T + bias, through ``kron_matmul`` (KnGPT2's compressed linear map)."""

    def __init__(self, in_features: int, out_features: int, a_shape: Shape | None = None,
                 b_shape: Shape | None = None, rank: int = 1, bias: bool = True, factor: int = -1,
                 name: str = "layer"):
        super().__init__()
        self.a_shape, self.b_shape = factor_shapes(out_features, in_features, factor, a_shape, b_shape, name)
        self.in_features, self.out_features, self.rank = in_features, out_features, int(rank)
        self.A = nn.Parameter(torch.empty(self.rank, *self.a_shape))
        self.B = nn.Parameter(torch.empty(self.rank, *self.b_shape))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        for k in range(self.rank):  # per product: fan-in of each factor, like nn.Linear
            nn.init.kaiming_uniform_(self.A.data[k], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.B.data[k], a=math.sqrt(5))
        self.approx_error: float | None = None  # relative error of from_dense, if built that way

    @classmethod
    def from_dense(cls, linear_or_weight, a_shape: Shape | None = None, b_shape: Shape | None = None,
                   rank: int = 1, factor: int = -1, bias: torch.Tensor | None = None,
                   name: str = "layer", init: str = "nearest") -> "KroneckerLinear":
        """Nearest sum of ``rank`` Kronecker products of a dense layer (nn.Linear, GPT-2 Conv1D, or a
        (d_out, d_in) tensor; ``bias`` overrides the layer's). ``init="random"``: same shapes and bias, factors
        left at their random init (the baseline that shows what the nearest-Kronecker start is worth)."""
        check_init(init, name)
        W, layer_bias = _dense_weight(linear_or_weight)
        bias = layer_bias if bias is None else bias
        d_out, d_in = W.shape
        layer = cls(d_in, d_out, a_shape, b_shape, rank, bias is not None, factor, name).to(W.device, W.dtype)
        with torch.no_grad():
            if init == "nearest":
                A, B, layer.approx_error = nearest_kronecker(W, layer.a_shape, layer.b_shape, rank, True, name)
                layer.A.copy_(A)
                layer.B.copy_(B)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The dense (d_out, d_in) matrix this layer applies (never used by the forward)."""
        return kron_dense(self.A, self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kron_matmul(x, self.A, self.B)  # (..., d_out)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, a_shape={self.a_shape}, "
                f"b_shape={self.b_shape}, rank={self.rank}, bias={self.bias is not None}")


class KroneckerEmbedding(nn.Module):
    """KnGPT2's embedding: E = sum_k A_k ⊗ b_k with A_k (V, d/f) and b_k (1, f), so token i embeds as
    sum_k A_k[i] ⊗ b_k (a row of A times a small shared vector)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, factor: int = 2, rank: int = 1,
                 name: str = "embedding"):
        super().__init__()
        if factor <= 0 or embedding_dim % factor:
            raise ValueError(f"{name}: factor={factor} does not divide embedding_dim={embedding_dim}; "
                             f"valid choices: {divisors(embedding_dim)}")
        self.num_embeddings, self.embedding_dim, self.factor, self.rank = num_embeddings, embedding_dim, factor, rank
        self.A = nn.Parameter(torch.randn(rank, num_embeddings, embedding_dim // factor))  # (r, V, d/f)
        self.B = nn.Parameter(torch.ones(rank, 1, factor) / math.sqrt(rank))  # (r, 1, f)
        self.approx_error: float | None = None

    @classmethod
    def from_dense(cls, embedding_or_weight, factor: int = 2, rank: int = 1,
                   name: str = "embedding", init: str = "nearest") -> "KroneckerEmbedding":
        check_init(init, name)
        W = embedding_or_weight.weight if isinstance(embedding_or_weight, nn.Embedding) else embedding_or_weight
        V, d = W.shape
        layer = cls(V, d, factor, rank, name).to(W.device, W.dtype)
        with torch.no_grad():
            if init == "nearest":
                A, B, layer.approx_error = nearest_kronecker(W, (V, d // factor), (1, factor), rank, True, name)
                layer.A.copy_(A)
                layer.B.copy_(B)
            else:  # random rows at the dense table's scale (a unit-normal table would swamp a trained model)
                layer.A.mul_(W.detach().float().std().item())
        return layer

    @property
    def weight(self) -> torch.Tensor:
        return kron_dense(self.A, self.B)  # (V, d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.A[:, ids]  # (r, ..., d/f): only the looked-up rows
        e = torch.einsum("k...i,kj->...ij", rows, self.B[:, 0])  # (..., d/f, f)
        return e.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, factor={self.factor}, rank={self.rank}"


class FusedKroneckerLinear(nn.Module):
    """A fused map (GPT-2's ``c_attn``: Q, K and V in one Conv1D) split into ``parts`` equal output slices
    before decomposing, each its own ``KroneckerLinear``: y = cat(part_0(x), ..., part_{n-1}(x)). One
    product over the fused matrix would mix Q, K and V in its factors."""

    def __init__(self, parts: Sequence[KroneckerLinear]):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.in_features = parts[0].in_features
        self.out_features = sum(p.out_features for p in parts)

    @classmethod
    def from_dense(cls, linear_or_weight, parts: int, a_shape: Shape | None = None, b_shape: Shape | None = None,
                   rank: int = 1, factor: int = -1, name: str = "layer", init: str = "nearest"):
        W, bias = _dense_weight(linear_or_weight)
        if parts <= 0 or W.shape[0] % parts:
            raise ValueError(f"{name}: the fused map's {W.shape[0]} outputs do not split into {parts} equal parts")
        ws, bs = W.chunk(parts, 0), (bias.chunk(parts, 0) if bias is not None else [None] * parts)
        return cls([KroneckerLinear.from_dense(w, a_shape, b_shape, rank, factor, b, f"{name}[{i}]", init)
                    for i, (w, b) in enumerate(zip(ws, bs))])

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([p.weight for p in self.parts], 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], -1)


class KroneckerTiedHead(nn.Module):
    """An LM head tied to a ``KroneckerEmbedding`` (E = sum_k A_k ⊗ b_k, (V, d)): logits = h E^T through
    ``kron_matmul`` with the embedding's own factors (a_out = V, b_out = 1), never building E. It owns no
    parameters, so the tie survives training and checkpoints."""

    def __init__(self, embedding: KroneckerEmbedding):
        super().__init__()
        self._embedding = [embedding]  # a list: not a submodule, so its factors are counted once

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        emb = self._embedding[0]
        return kron_matmul(hidden, emb.A, emb.B)
