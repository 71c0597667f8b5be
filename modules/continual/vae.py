"""A conditional VAE, the alternative generator: encoder q(z | x, c), decoder p(x | z, c).

``forward(z, c)`` decodes, so a ``ConditionalVAE`` is a drop-in ``G(z, c)`` for the regularisers and
the evaluation (they only ever call ``G(z, c)``); ``reconstruct(x, c)`` runs the whole VAE for training.
The decoder mean lies in [-1, 1] (tanh), like the GAN's images.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConditionalVAE(nn.Module):
    """MLP encoder / decoder on flattened images, the class as a learned embedding on both sides."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, z_dim: int = 16, hidden: int = 256,
                 embed_dim: int = 16):
        super().__init__()
        self.image_shape, self.num_classes, self.z_dim = tuple(image_shape), num_classes, z_dim
        d = int(torch.tensor(image_shape).prod())
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.encoder = nn.Sequential(nn.Linear(d + embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mu, self.logvar = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(nn.Linear(z_dim + embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                     nn.ReLU(), nn.Linear(hidden, d), nn.Tanh())

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x.flatten(1), self.embed(c)], dim=1))
        return self.mu(h), self.logvar(h)  # (B, z_dim) each

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Decode: (B, z_dim), (B,) -> (B, C, H, W)."""
        return self.decoder(torch.cat([z, self.embed(c)], dim=1)).view(len(z), *self.image_shape)

    def reconstruct(self, x: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction, mu, logvar) with z = mu + σ·ε (reparameterisation)."""
        mu, logvar = self.encode(x, c)
        eps = torch.randn(mu.shape, generator=generator).to(mu)
        return self(mu + (0.5 * logvar).exp() * eps, c), mu, logvar


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             beta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative ELBO per sample, averaged over the batch:
    Σ_pixels (x - x̂)² / 2  +  β · KL(N(mu, σ²) || N(0, I)),  KL = -½ Σ (1 + log σ² - mu² - σ²).
    (A unit-variance Gaussian decoder, up to a constant.)
    """
    rec = 0.5 * (recon - x).pow(2).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
    return rec + beta * kl, {"vae/rec": rec.item(), "vae/kl": kl.item()}


def vae_step(vae: ConditionalVAE, opt: torch.optim.Optimizer, x: torch.Tensor, c: torch.Tensor, beta: float = 1.0,
             extra: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, float]:
    """One optimizer step on the negative ELBO (+ ``extra``, e.g. a regulariser towards the old decoder)."""
    recon, mu, logvar = vae.reconstruct(x, c, generator)
    loss, stats = vae_loss(recon, x, mu, logvar, beta)
    if extra is not None:
        loss = loss + extra
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return stats
