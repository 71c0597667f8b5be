"""Regularisers that keep the current generator G_t close to the frozen previous one G_{t-1}.

Common interface: ``reg(G_new, G_old, z, c_old) -> scalar loss`` (already multiplied by its weight),
where ``z`` (B, z_dim) and ``c_old`` (B,) are a replay batch of **old classes only** (``ReplaySampler``).

| name        | loss                                                                | from           |
|-------------|---------------------------------------------------------------------|----------------|
| ``none``    | 0                                                                   | fine-tuning    |
| ``ewc``     | Σ_i F_i (θ_i − θ_i^{old})²                                          | EWC, params    |
| ``pixel``   | mean_b ‖G_t(z_b, c_b) − G_{t-1}(z_b, c_b)‖²                           | MeRGAN (RA)    |
| ``feature`` | mean_b ‖φ(G_t(z_b, c_b)) − φ(G_{t-1}(z_b, c_b))‖²                     | FoCL           |
| combined    | ``Combined(pixel, feature)``: the sum of weighted terms              | FoCL           |

φ (``make_feature_extractor``): ``critic`` (the current critic's last hidden layer; gradients flow
through it into G only, the critic's optimizer is not stepped by this loss), ``classifier`` (a frozen
classifier trained on real data, loaded from a checkpoint), ``random`` (a fixed randomly initialised
network). Norms are squared L2 summed over pixels / features and averaged over the batch, so a weight
does not depend on the batch size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) -> (B, F)


class ReplaySampler:
    """Replay batches (z, c_old) for the old classes only, balanced over them, from its own RNG.

    Its own generator (seeded ``seed``) keeps the main training stream untouched, so a run with a
    regulariser at weight 0 draws exactly the same data / noise as plain fine-tuning.
    """

    def __init__(self, classes_old: Sequence[int], z_dim: int, batch_size: int, seed: int = 0):
        if not len(classes_old):
            raise ValueError("ReplaySampler needs at least one old class (there is nothing to replay at task 0)")
        self.classes_old = torch.as_tensor(sorted(set(int(c) for c in classes_old)), dtype=torch.long)
        self.z_dim, self.batch_size = z_dim, batch_size
        self.rng = torch.Generator().manual_seed(seed)

    def sample(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = n or self.batch_size
        c = self.classes_old[torch.arange(n) % len(self.classes_old)]  # balanced, (n,)
        return torch.randn(n, self.z_dim, generator=self.rng), c

    def state_dict(self) -> dict:
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.set_state(state["rng"])


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).sum(1).mean()  # mean over batch of ‖a_b − b_b‖²


class Regularizer(nn.Module):
    """Base: ``weight * penalty(G_new, G_old, z, c_old)``."""

    name = "base"

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def penalty(self, G_new, G_old, z, c_old) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, G_new: nn.Module, G_old: nn.Module, z: torch.Tensor, c_old: torch.Tensor) -> torch.Tensor:
        return self.weight * self.penalty(G_new, G_old, z, c_old)


class NoRegularizer(Regularizer):
    """Plain sequential fine-tuning."""

    name = "none"

    def penalty(self, G_new, G_old, z, c_old):
        return torch.zeros((), device=z.device)


class PixelAlignment(Regularizer):
    """MeRGAN replay alignment: mean_b ‖G_t(z, c) − G_{t-1}(z, c)‖² over old classes, same z."""

    name = "pixel"

    def penalty(self, G_new, G_old, z, c_old):
        with torch.no_grad():
            target = G_old(z, c_old)  # (B, C, H, W)
        return _sq_dist(G_new(z, c_old), target)


class FeatureAlignment(Regularizer):
    """FoCL: mean_b ‖φ(G_t(z, c)) − φ(G_{t-1}(z, c))‖² over old classes, same z."""

    name = "feature"

    def __init__(self, phi: FeatureFn | nn.Module, weight: float = 1.0):
        super().__init__(weight)
        self.phi = phi  # an nn.Module φ becomes a submodule (moved with .to()); not trained: frozen or critic

    def penalty(self, G_new, G_old, z, c_old):
        with torch.no_grad():
            target = self.phi(G_old(z, c_old))  # (B, F)
        return _sq_dist(self.phi(G_new(z, c_old)), target)


class Combined(Regularizer):
    """The sum of several weighted regularisers (e.g. pixel + feature), each with its own weight."""

    name = "combined"

    def __init__(self, *terms: Regularizer):
        super().__init__(1.0)
        self.terms = nn.ModuleList(terms)

    def penalty(self, G_new, G_old, z, c_old):
        return sum(term(G_new, G_old, z, c_old) for term in self.terms)


def reg_terms(reg: Regularizer) -> list[Regularizer]:
    """The separately normalised terms of a regulariser: a ``Combined``'s parts, else the regulariser itself."""
    return list(reg.terms) if isinstance(reg, Combined) else [reg]


def normalized_gradients(params: Sequence[torch.Tensor], main: torch.Tensor, terms: Sequence[torch.Tensor],
                         ratio: float, eps: float = 1e-12) -> tuple[list[torch.Tensor], list[float]]:
    """The tuning-free protocol: g = ∇main + Σ_i s_i ∇term_i, s_i = ratio · ‖∇main‖ / ‖∇term_i‖ (a constant).

    Each term's gradient on ``params`` is rescaled so that its norm is ``ratio`` times the norm of the main
    (GAN) loss's gradient, whatever the term's own scale or weight: the pixel and feature terms, whose
    sizes differ by one or two orders of magnitude, then pull with the same strength. A term with a zero
    gradient (G_t = G_{t-1} at the first step of a task) stays zero. Returns the gradients (one per param)
    and the scales s_i.
    """
    params = list(params)

    def grad(loss, retain):
        gs = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]

    def norm(gs):
        return torch.sqrt(sum(g.pow(2).sum() for g in gs))

    total = grad(main, True)
    main_norm = norm(total)
    scales = []
    for i, term in enumerate(terms):
        gs = grad(term, i < len(terms) - 1)
        scale = (ratio * main_norm / norm(gs).clamp_min(eps)).item()
        total = [t + scale * g for t, g in zip(total, gs)]
        scales.append(scale)
    return total, scales


class EWC(Regularizer):
    """Parameter space: Σ_i F_i (θ_i − θ_i^{old})², θ^{old} read from G_old at every call, F fixed.

    ``fisher`` maps parameter names of G to tensors of their shape (``estimate_fisher``). The
    replay batch is not used.
    """

    name = "ewc"

    def __init__(self, fisher: dict[str, torch.Tensor], weight: float = 1.0):
        super().__init__(weight)
        self.fisher = {k: v.detach() for k, v in fisher.items()}

    def penalty(self, G_new, G_old, z, c_old):
        old = dict(G_old.named_parameters())
        total = torch.zeros((), device=z.device)
        for name, p in G_new.named_parameters():
            if name in self.fisher:
                total = total + (self.fisher[name].to(p) * (p - old[name].detach()).pow(2)).sum()
        return total


def estimate_fisher(G_old: nn.Module, replay: ReplaySampler, n_batches: int = 10,
                    normalize: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the old generator, seen as a Gaussian output model x ~ N(G_{t-1}(z, c), I):

        F_i = E_{z, c ∈ old classes} [ Σ_k (∂G_k(z, c) / ∂θ_i)² ].

    Estimated without per-sample gradients: with ε ~ N(0, I) of the image's shape,
    E_ε[(∂/∂θ_i Σ_{b,k} ε_bk G_bk)²] = Σ_b Σ_k (∂G_bk/∂θ_i)² (the cross terms vanish in expectation),
    so one backward pass per batch gives an unbiased estimate of the batch sum; it is averaged over
    ``n_batches`` replay batches and divided by the batch size. ``normalize`` rescales F to mean 1
    over all parameters, so the EWC weight does not depend on the network's output scale.
    It needs no critic, and uses the old classes only (the replay sampler's).
    """
    params = {n: p for n, p in G_old.named_parameters()}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    device = next(G_old.parameters()).device
    frozen = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)  # G_{t-1} is usually frozen; gradients are needed here only
    try:
        with torch.enable_grad():
            for _ in range(n_batches):
                z, c = replay.sample()
                x = G_old(z.to(device), c.to(device))
                eps = torch.randn(x.shape, generator=replay.rng).to(x)
                grads = torch.autograd.grad((eps * x).sum(), list(params.values()), allow_unused=True)
                for n, g in zip(params, grads):
                    if g is not None:
                        fisher[n] += g.detach().pow(2) / (n_batches * len(z))
    finally:
        for n, p in params.items():
            p.requires_grad_(frozen[n])
    if normalize:
        mean = torch.cat([f.flatten() for f in fisher.values()]).mean().clamp_min(1e-12)
        fisher = {n: f / mean for n, f in fisher.items()}
    return fisher


# --- feature extractors φ ------------------------------------------------------------------------

class CriticFeatures(nn.Module):
    """φ(x) = the critic's last hidden layer (the third output of D(x)). Holds D without owning it."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self._critic = [critic]  # a list: not registered as a submodule, so no second copy in state dicts

    def forward(self, x):
        return self._critic[0](x)[2]


class RandomFeatures(nn.Module):
    """A fixed random network (never trained): MLP for small images, 2 stride-2 convs above 16x16."""

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int = 128, seed: int = 0):
        super().__init__()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # its weights depend on the seed only
        c, h, w = image_shape
        if h <= 16:
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, out_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(out_dim, out_dim))
        else:
            self.net = nn.Sequential(nn.Conv2d(c, 32, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 4, 2, 1),
                                     nn.LeakyReLU(0.2), nn.Flatten(), nn.LazyLinear(out_dim))
            self.net(torch.zeros(1, c, h, w))  # materialise the lazy layer
        torch.random.set_rng_state(gen_state)
        self.requires_grad_(False)

    def forward(self, x):
        return self.net(x)


class FrozenFeatures(nn.Module):
    """φ(x) = ``model.features(x)`` of a frozen model (e.g. a classifier trained on real data)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # stays in eval mode whatever the caller's mode

    def forward(self, x):
        return self.model.features(x)


FEATURE_KINDS = ("critic", "classifier", "random")


def make_feature_extractor(kind: str, *, critic: nn.Module | None = None, classifier: nn.Module | None = None,
                           checkpoint: str | Path | None = None, image_shape: tuple[int, int, int] | None = None,
                           seed: int = 0, key: str = "regularizer.phi") -> nn.Module:
    """φ by name: ``critic`` (needs ``critic``), ``classifier`` (a model with ``.features`` or a
    checkpoint written by ``evaluation.save_classifier``), ``random`` (needs ``image_shape``)."""
    if kind == "critic":
        if critic is None:
            raise ValueError(f"{key}=critic needs the critic D")
        return CriticFeatures(critic)
    if kind == "classifier":
        if classifier is None:
            if checkpoint is None:
                raise ValueError(f"{key}=classifier needs a classifier or {key}_checkpoint=PATH")
            from .evaluation import load_classifier  # sibling pure module

            classifier = load_classifier(checkpoint, key=f"{key}_checkpoint")
        return FrozenFeatures(classifier)
    if kind == "random":
        if image_shape is None:
            raise ValueError(f"{key}=random needs image_shape")
        return RandomFeatures(image_shape, seed=seed)
    raise ValueError(f"{key}={kind!r} is not an option; choose one of: {', '.join(FEATURE_KINDS)}")


REGULARIZERS = ("none", "ewc", "pixel", "feature", "combined")


def make_regularizer(name: str, *, weight: float = 1.0, pixel_weight: float | None = None,
                     feature_weight: float | None = None, phi: nn.Module | None = None,
                     fisher: dict[str, torch.Tensor] | None = None, key: str = "regularizer.name") -> Regularizer:
    """A regulariser by name (what a config picks). ``combined`` uses pixel_weight / feature_weight."""
    if name == "none":
        return NoRegularizer(0.0)
    if name == "pixel":
        return PixelAlignment(weight)
    if name in ("feature", "combined") and phi is None:
        raise ValueError(f"{key}={name} needs a feature extractor φ (make_feature_extractor)")
    if name == "feature":
        return FeatureAlignment(phi, weight)
    if name == "combined":
        return Combined(PixelAlignment(weight if pixel_weight is None else pixel_weight),
                        FeatureAlignment(phi, weight if feature_weight is None else feature_weight))
    if name == "ewc":
        if fisher is None:
            raise ValueError(f"{key}=ewc needs a Fisher estimate (estimate_fisher on the old generator)")
        return EWC(fisher, weight)
    raise ValueError(f"{key}={name!r} is not an option; choose one of: {', '.join(REGULARIZERS)}")
