"""A compact ViT whose nested sub-networks (SortedNet) are slices of one set of weights.

Parameter names mirror HF ``ViTForImageClassification`` (transformers 5): ``vit.embeddings``,
``vit.layers.{i}.attention.{q,k,v,o}_proj``, ``layernorm_before/after``, ``mlp.fc1/fc2``,
``vit.layernorm``, ``classifier``, so ``load_hf_vit`` is a plain ``load_state_dict``.

A sub-network is the first-k truncation along four axes (SortedNet, arXiv 2309.00255); slicing
takes views of the parameters, nothing is copied:

- ``depth``  n:  the first n blocks.
- ``width``  d': the first d' residual channels: patch-embedding outputs, cls token, position
  embeddings, every LayerNorm (normalised over the d' channels with weight[:d'], bias[:d']),
  Q/K/V and fc1 input columns, o_proj and fc2 output rows, classifier input columns.
- ``heads``  h:  the first h heads: Q/K/V output rows [:h*head_dim], o_proj input columns.
- ``mlp``    k:  the first k hidden units: fc1 rows [:k], fc2 columns [:k].

Rules (checked; a violation raises ``SubModelError``, a ``ValueError``, naming axis, value and
the valid choices):

- ``head_dim`` is fixed under slicing (hidden_size / num_attention_heads of the full model): a
  head is a unit that is either kept or dropped, never thinned.
- ``width`` is a multiple of ``width_step = hidden_size / num_attention_heads`` (the head size
  for a standard ViT) in [width_step, hidden_size].
- an axis absent from the sub-model takes its default: depth and width the full model's; heads
  and mlp *follow the width*: heads = H * d'/d, mlp = floor(K * d'/d). So a width-only
  sub-network is a standard smaller ViT with the same head size and MLP ratio (the natural
  "independently trained small model" baseline); give ``heads``/``mlp`` to decouple them.
- 1 <= depth <= num_hidden_layers, 1 <= heads <= num_attention_heads, 1 <= mlp <= intermediate_size.

``count_flops`` counts multiply-adds (MACs) of the matmuls for one image, T = N + 1 tokens,
N = (image_size / patch)^2, a = heads * head_dim:
  patch embedding N*d'*C*p^2 + per block [3*T*d'*a (QKV) + 2*T^2*a (QK^T, AV) + T*a*d' (out)
  + 2*T*d'*k (MLP)] + d'*num_labels (classifier on the cls token).
LayerNorm, softmax, GELU, bias and residual adds are left out (O(T*d') each). FLOPs ~ 2 x MACs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.submodel import NestedModel, SubModel, SubModelError, SubModelSpace

AXES = ("depth", "width", "heads", "mlp")
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class SortedViTConfig:
    """Field names follow HF ``ViTConfig`` so one maps onto the other."""

    image_size: int = 32
    patch_size: int = 4
    num_channels: int = 3
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    num_labels: int = 10
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"model.hidden_act={self.hidden_act!r} is not an option; choose one of: "
                             f"{', '.join(ACTIVATIONS)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size={self.image_size} is not a multiple of "
                             f"model.patch_size={self.patch_size}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"model.hidden_size={self.hidden_size} is not divisible by "
                                 f"model.num_attention_heads={self.num_attention_heads}; set model.head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_mapping(cls, cfg: "SortedViTConfig | Mapping") -> "SortedViTConfig":
        """From a config object or a (Hydra) mapping; keys starting with ``_`` are ignored."""
        if isinstance(cfg, SortedViTConfig):
            return cfg
        fields = {f.name for f in dataclasses.fields(cls)}
        items = {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}
        unknown = sorted(set(items) - fields)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown}; valid: {sorted(fields)}")
        return cls(**items)

    @classmethod
    def from_hf(cls, hf_config) -> "SortedViTConfig":
        size, patch = hf_config.image_size, hf_config.patch_size
        if not isinstance(size, int) or not isinstance(patch, int):
            raise ValueError(f"only square images/patches are supported, got image_size={size}, patch_size={patch}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"head_dim"}
        kwargs = {name: getattr(hf_config, name) for name in fields if hasattr(hf_config, name)}
        kwargs["head_dim"] = getattr(hf_config, "head_dim", None)
        return cls(**kwargs)

    @property
    def width_step(self) -> int:
        """Widths are multiples of this (the head size for a standard ViT)."""
        return max(1, self.hidden_size // self.num_attention_heads)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SubShape(NamedTuple):
    """A sub-network with every axis resolved."""

    depth: int
    width: int
    heads: int
    mlp: int


def valid_choices(cfg: SortedViTConfig, axis: str) -> list[int]:
    """Every value ``axis`` may take for this model."""
    if axis == "depth":
        return list(range(1, cfg.num_hidden_layers + 1))
    if axis == "width":
        return list(range(cfg.width_step, cfg.hidden_size + 1, cfg.width_step))
    if axis == "heads":
        return list(range(1, cfg.num_attention_heads + 1))
    if axis == "mlp":
        return list(range(1, cfg.intermediate_size + 1))
    raise SubModelError(f"unknown sub-network axis {axis!r}; valid axes: {', '.join(AXES)}")


def _describe(values: list[int]) -> str:
    if len(values) > 8 and values == list(range(values[0], values[-1] + 1, values[1] - values[0])):
        step = values[1] - values[0]
        return f"{values[0]}..{values[-1]}" + (f" in steps of {step}" if step > 1 else "")
    return str(values)


def check_axis(cfg: SortedViTConfig, axis: str, value: int) -> int:
    choices = valid_choices(cfg, axis)
    if value not in choices:
        why = f" (multiples of hidden_size / num_attention_heads = {cfg.width_step})" if axis == "width" else ""
        raise SubModelError(f"{axis}={value} is not valid for this ViT; valid choices: {_describe(choices)}{why}")
    return int(value)


def resolve(cfg: SortedViTConfig, sub: SubModel | Mapping[str, int] | None) -> SubShape:
    """Fill the absent axes (see the module docstring) and validate every value."""
    given = {} if sub is None else (sub.as_dict() if isinstance(sub, SubModel) else dict(sub))
    for axis, value in given.items():
        check_axis(cfg, axis, value)
    width = given.get("width", cfg.hidden_size)
    return SubShape(
        depth=given.get("depth", cfg.num_hidden_layers),
        width=width,
        heads=given.get("heads", cfg.num_attention_heads * width // cfg.hidden_size),
        mlp=given.get("mlp", max(1, cfg.intermediate_size * width // cfg.hidden_size)),
    )


# ---------------------------------------------------------------------------------------------
# Sliced primitives: a layer used through its first rows/columns (views, no copies).

def sliced_linear(layer: nn.Linear, x: torch.Tensor, out: int | None = None, inp: int | None = None):
    bias = None if layer.bias is None else layer.bias[:out]
    return F.linear(x, layer.weight[:out, :inp], bias)


def sliced_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]  # normalise over the d' channels present, with the first d' affine params
    return F.layer_norm(x, (d,), norm.weight[:d], norm.bias[:d], norm.eps)


# ---------------------------------------------------------------------------------------------
# The model.

class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: SortedViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixel_values: torch.Tensor, width: int) -> torch.Tensor:
        w, b = self.projection.weight[:width], self.projection.bias[:width]
        x = F.conv2d(pixel_values, w, b, stride=self.projection.stride)  # (B, d', H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, d')


class Embeddings(nn.Module):
    def __init__(self, cfg: SortedViTConfig):
        super().__init__()
        self.image_size = cfg.image_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.hidden_size))
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, width: int) -> torch.Tensor:
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"input images are {tuple(pixel_values.shape[-2:])}, the model expects "
                             f"({self.image_size}, {self.image_size}) (model.image_size)")
        x = self.patch_embeddings(pixel_values, width)  # (B, N, d')
        cls = self.cls_token[..., :width].expand(x.shape[0], -1, -1)  # (B, 1, d')
        x = torch.cat([cls, x], dim=1) + self.position_embeddings[..., :width]  # (B, T, d')
        return self.dropout(x)


class Attention(nn.Module):
    def __init__(self, cfg: SortedViTConfig):
        super().__init__()
        inner = cfg.num_attention_heads * cfg.head_dim
        self.head_dim = cfg.head_dim
        self.dropout = cfg.attention_probs_dropout_prob
        self.q_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, inner, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(inner, cfg.hidden_size)

    def forward(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        B, T, d = x.shape
        a = heads * self.head_dim
        q, k, v = (sliced_linear(p, x, out=a, inp=d).view(B, T, heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, h, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, a)  # (B, T, h*hd)
        return sliced_linear(self.o_proj, y, out=d, inp=a)  # (B, T, d')


class MLP(nn.Module):
    def __init__(self, cfg: SortedViTConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, units: int) -> torch.Tensor:
        d = x.shape[-1]
        h = self.act(sliced_linear(self.fc1, x, out=units, inp=d))  # (B, T, k)
        return sliced_linear(self.fc2, h, out=d, inp=units)  # (B, T, d')


class Block(nn.Module):
    """Pre-norm transformer block, as HF ``ViTLayer``."""

    def __init__(self, cfg: SortedViTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = Attention(cfg)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, shape: SubShape) -> torch.Tensor:
        x = x + self.dropout(self.attention(sliced_layer_norm(self.layernorm_before, x), shape.heads))
        return x + self.dropout(self.mlp(sliced_layer_norm(self.layernorm_after, x), shape.mlp))


class Backbone(nn.Module):
    def __init__(self, cfg: SortedViTConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, shape: SubShape) -> torch.Tensor:
        x = self.embeddings(pixel_values, shape.width)  # (B, T, d')
        for block in self.layers[: shape.depth]:
            x = block(x, shape)
        return sliced_layer_norm(self.layernorm, x)  # (B, T, d')


class SortedViT(nn.Module):
    """ViT classifier; ``forward(pixels, submodel)`` runs the sub-network ``submodel``.

    With ``submodel=None`` it runs the *active* sub-network: the full model unless
    ``set_submodel`` or the setters of ``nested(...)`` switched it.
    """

    def __init__(self, cfg: SortedViTConfig | Mapping):
        super().__init__()
        self.config = SortedViTConfig.from_mapping(cfg)
        self.vit = Backbone(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.active: dict[str, int] = {}  # the axes set explicitly; absent ones take their defaults
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.vit.embeddings.cls_token, std=std)
        nn.init.trunc_normal_(self.vit.embeddings.position_embeddings, std=std)

    # --- switching sub-networks ------------------------------------------------------------
    def resolve(self, sub: SubModel | Mapping[str, int] | None = None) -> SubShape:
        return resolve(self.config, sub)

    def set_submodel(self, sub: SubModel | Mapping[str, int] | None) -> None:
        """Make ``sub`` the active sub-network (``None``: the full model)."""
        given = {} if sub is None else (sub.as_dict() if isinstance(sub, SubModel) else dict(sub))
        resolve(self.config, given)  # validate before switching
        self.active = given

    def set_axis(self, axis: str, value: int) -> None:
        """Set one axis of the active sub-network (a ``NestedModel`` setter)."""
        self.active = {**self.active, axis: check_axis(self.config, axis, value)}

    def space(self, axes: Mapping[str, Sequence[int]]) -> SubModelSpace:
        """A validated ``SubModelSpace`` over this model's axes."""
        if not axes:
            raise SubModelError(f"the sub-network grid is empty; give values for some of: {', '.join(AXES)}")
        for axis, values in axes.items():
            if len(list(values)) == 0:
                raise SubModelError(f"sub-network grid axis {axis!r} is empty; valid choices: "
                                    f"{_describe(valid_choices(self.config, axis))}")
            for value in values:
                check_axis(self.config, axis, int(value))
        return SubModelSpace(axes)

    def nested(self, axes: Mapping[str, Sequence[int]]) -> NestedModel:
        """``NestedModel`` whose setters switch this model, e.g. ``{"depth": [1, 2], "width": [64, 128]}``."""
        self.space(axes)  # validate
        return NestedModel(axes, {axis: partial(self.set_axis, axis) for axis in axes})

    # --- forward ---------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, submodel: SubModel | Mapping[str, int] | None = None):
        shape = self.resolve(self.active if submodel is None else submodel)
        x = self.vit(pixel_values, shape)  # (B, T, d')
        return sliced_linear(self.classifier, x[:, 0], inp=shape.width)  # (B, num_labels)


# ---------------------------------------------------------------------------------------------
# Slices, counts, independent models, HF weights.

def submodel_slices(model: SortedViT, sub: SubModel | Mapping[str, int] | None) -> dict[str, tuple]:
    """Parameter name -> index of the slice the sub-network uses; parameters it does not use are absent."""
    s = model.resolve(sub)
    d, a, k = slice(0, s.width), slice(0, s.heads * model.config.head_dim), slice(0, s.mlp)
    whole = slice(None)
    idx = {
        "vit.embeddings.cls_token": (whole, whole, d),
        "vit.embeddings.position_embeddings": (whole, whole, d),
        "vit.embeddings.patch_embeddings.projection.weight": (d,),
        "vit.embeddings.patch_embeddings.projection.bias": (d,),
        "vit.layernorm.weight": (d,),
        "vit.layernorm.bias": (d,),
        "classifier.weight": (whole, d),
        "classifier.bias": (whole,),
    }
    for i in range(s.depth):
        p = f"vit.layers.{i}."
        for norm in ("layernorm_before", "layernorm_after"):
            idx[p + norm + ".weight"] = idx[p + norm + ".bias"] = (d,)
        for proj in ("q_proj", "k_proj", "v_proj"):
            idx[p + f"attention.{proj}.weight"], idx[p + f"attention.{proj}.bias"] = (a, d), (a,)
        idx[p + "attention.o_proj.weight"], idx[p + "attention.o_proj.bias"] = (d, a), (d,)
        idx[p + "mlp.fc1.weight"], idx[p + "mlp.fc1.bias"] = (k, d), (k,)
        idx[p + "mlp.fc2.weight"], idx[p + "mlp.fc2.bias"] = (d, k), (d,)
    names = dict(model.named_parameters())
    return {name: index for name, index in idx.items() if name in names}  # drops absent qkv biases


def count_params(model: SortedViT, sub: SubModel | Mapping[str, int] | None = None) -> int:
    """Parameters of the sub-network (the numel of its slices)."""
    params = dict(model.named_parameters())
    return sum(params[name][index].numel() for name, index in submodel_slices(model, sub).items())


def count_flops(model: SortedViT, sub: SubModel | Mapping[str, int] | None = None,
                image_size: int | None = None) -> int:
    """Multiply-adds of the matmuls for one image (formula in the module docstring)."""
    cfg = model.config
    s = model.resolve(sub)
    n = ((image_size or cfg.image_size) // cfg.patch_size) ** 2
    t, d, a, k = n + 1, s.width, s.heads * cfg.head_dim, s.mlp
    patch = n * d * cfg.num_channels * cfg.patch_size ** 2
    block = 3 * t * d * a + 2 * t * t * a + t * a * d + 2 * t * d * k
    return patch + s.depth * block + d * cfg.num_labels


def independent_config(model_cfg: SortedViTConfig | Mapping, sub: SubModel | Mapping[str, int] | None
                       ) -> SortedViTConfig:
    """The config of a standalone ViT shaped exactly like the sub-network (same head size)."""
    cfg = SortedViTConfig.from_mapping(model_cfg)
    s = resolve(cfg, sub)
    return dataclasses.replace(cfg, hidden_size=s.width, num_hidden_layers=s.depth,
                               num_attention_heads=s.heads, intermediate_size=s.mlp, head_dim=cfg.head_dim)


def build_independent(model_cfg: SortedViTConfig | Mapping, sub: SubModel | Mapping[str, int] | None
                      ) -> SortedViT:
    """A separate, freshly initialised ViT of the sub-network's shape (the 'trained alone' baseline)."""
    return SortedViT(independent_config(model_cfg, sub))


@torch.no_grad()
def copy_slices(big: SortedViT, small: SortedViT, sub: SubModel | Mapping[str, int] | None) -> SortedViT:
    """Load the sub-network's slices of ``big`` into ``small`` (built by ``build_independent``)."""
    src, dst = dict(big.named_parameters()), dict(small.named_parameters())
    slices = submodel_slices(big, sub)
    if set(slices) != set(dst):
        raise ValueError(f"the small model does not have the sub-network's layout: missing "
                         f"{sorted(set(slices) - set(dst))[:3]}, extra {sorted(set(dst) - set(slices))[:3]}")
    for name, index in slices.items():
        piece = src[name][index]
        if piece.shape != dst[name].shape:
            raise ValueError(f"{name}: slice has shape {tuple(piece.shape)}, small model has "
                             f"{tuple(dst[name].shape)}; build it with build_independent(cfg, sub)")
        dst[name].copy_(piece)
    return small


def load_hf_vit(hf_model) -> SortedViT:
    """A ``SortedViT`` with the weights of a HF ``ViTForImageClassification`` (transformers 5 names)."""
    model = SortedViT(SortedViTConfig.from_hf(hf_model.config))
    state = {k: v for k, v in hf_model.state_dict().items() if not k.startswith("vit.pooler.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"HF ViT weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]} "
                         "(expected a transformers>=5 ViTForImageClassification)")
    return model


def cost_table(model: SortedViT, grid: Sequence[SubModel]) -> list[dict]:
    """Rows ``{"submodel", "params", "macs"}`` for a grid (for accuracy-vs-cost tables)."""
    return [{"submodel": sub.key, "params": count_params(model, sub), "macs": count_flops(model, sub)}
            for sub in grid]


__all__ = [
    "AXES", "SortedViTConfig", "SubShape", "SortedViT", "resolve", "valid_choices", "check_axis",
    "submodel_slices", "count_params", "count_flops", "independent_config", "build_independent",
    "copy_slices", "load_hf_vit", "cost_table",
]
