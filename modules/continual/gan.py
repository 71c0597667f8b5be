"""A small conditional WGAN-GP with an auxiliary classifier (AC-GAN), MeRGAN style.

- ``G(z, c)`` maps noise (B, z_dim) and class labels (B,) to images (B, C, H, W) in [-1, 1] (tanh).
- ``D(x)`` returns ``(score (B,), class_logits (B, K), features (B, F))``: a Wasserstein critic score,
  the auxiliary classifier head, and the last hidden layer (usable as a feature space φ).
- 8x8 images (sklearn digits) use MLPs; 28x28 / 32x32 use DCGAN-like convolutions.

The critic has no normalisation layer: the gradient penalty is per-sample and batch statistics would
couple samples. The generator has none either, so that two copies of the same weights give the same
images in train and eval mode (the alignment regularisers compare exactly such copies). The class
enters the generator as a learned embedding concatenated to z (MeRGAN uses class-conditional batch
norm instead).

Losses follow MeRGAN's code: critic = E[D(fake)] - E[D(real)] + λ·GP + CE(classifier(real), y);
generator = -E[D(fake)] + CE(classifier(fake), c); λ = 10, 5 critic steps per generator step (the
loop lives in ``trainer.py``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ImageShape = tuple[int, int, int]  # (C, H, W)


def _check_shape(image_shape: ImageShape) -> None:
    c, h, w = image_shape
    if h != w or (h > 16 and h % 4):
        raise ValueError(f"image_shape={tuple(image_shape)}: square images, side <= 16 (MLP) or a multiple of 4 "
                         f"(conv, e.g. 28 or 32)")


class MLPGenerator(nn.Module):
    """G(z, c) for small images (8x8): [z, embed(c)] -> MLP -> tanh."""

    def __init__(self, image_shape: ImageShape, num_classes: int, z_dim: int = 32, hidden: int = 256,
                 embed_dim: int = 16):
        super().__init__()
        self.image_shape, self.num_classes, self.z_dim = tuple(image_shape), num_classes, z_dim
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = nn.Sequential(
            nn.Linear(z_dim + embed_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, int(torch.tensor(image_shape).prod())), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(c)], dim=1)  # (B, z_dim + embed_dim)
        return self.net(h).view(len(z), *self.image_shape)  # (B, C, H, W)


class ConvGenerator(nn.Module):
    """G(z, c) for 28x28 / 32x32: linear to (4w, s, s), then stride-2 transposed convs up to H."""

    def __init__(self, image_shape: ImageShape, num_classes: int, z_dim: int = 64, width: int = 32,
                 embed_dim: int = 16):
        super().__init__()
        _check_shape(image_shape)
        self.image_shape, self.num_classes, self.z_dim = tuple(image_shape), num_classes, z_dim
        c, h, _ = image_shape
        n_up = 3 if h % 8 == 0 else 2  # 32 = 4 * 2^3, 28 = 7 * 2^2
        self.start = h // 2 ** n_up
        chans = [width * 2 ** (n_up - 1 - i) for i in range(n_up)] + [c]  # e.g. [128, 64, 32, 1]
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, chans[0] * self.start ** 2)
        layers = []
        for i in range(n_up):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1))
            layers.append(nn.ReLU() if i < n_up - 1 else nn.Tanh())
        self.deconv = nn.Sequential(*layers)
        self._c0 = chans[0]

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(torch.cat([z, self.embed(c)], dim=1)))
        h = h.view(len(z), self._c0, self.start, self.start)  # (B, 4w, s, s)
        return self.deconv(h)  # (B, C, H, W)


class MLPCritic(nn.Module):
    """D(x) -> (score, class_logits, features) for small images."""

    def __init__(self, image_shape: ImageShape, num_classes: int, hidden: int = 256):
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(int(torch.tensor(image_shape).prod()), hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
        )
        self.score, self.classify = nn.Linear(hidden, 1), nn.Linear(hidden, num_classes)
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor):
        f = self.body(x)  # (B, F)
        return self.score(f).squeeze(1), self.classify(f), f


class ConvCritic(nn.Module):
    """D(x) -> (score, class_logits, features) for 28x28 / 32x32: stride-2 convs, LeakyReLU, no norm."""

    def __init__(self, image_shape: ImageShape, num_classes: int, width: int = 32):
        super().__init__()
        _check_shape(image_shape)
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        c = image_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2),  # H/2
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),  # H/4
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(0.2),  # H/8 (28 -> 3)
            nn.Flatten(),
        )
        with torch.no_grad():
            self.feature_dim = self.body(torch.zeros(1, *image_shape)).shape[1]
        self.score, self.classify = nn.Linear(self.feature_dim, 1), nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor):
        f = self.body(x)  # (B, F)
        return self.score(f).squeeze(1), self.classify(f), f


def build_gan(image_shape: ImageShape, num_classes: int, z_dim: int | None = None, width: int | None = None):
    """(G, D) sized for the image: MLPs up to 16x16, convolutions above (28, 32, ...)."""
    _check_shape(image_shape)
    if image_shape[1] <= 16:
        return (MLPGenerator(image_shape, num_classes, z_dim or 32, width or 256),
                MLPCritic(image_shape, num_classes, width or 256))
    return (ConvGenerator(image_shape, num_classes, z_dim or 64, width or 32),
            ConvCritic(image_shape, num_classes, width or 32))


def critic_score(D: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The Wasserstein score (B,) of a critic that returns either a tensor or (score, ...)."""
    out = D(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: E[(||∇_x̂ D(x̂)||₂ - 1)²] at x̂ = real + α (fake - real), α ~ U(0, 1) per sample.

    ``create_graph=True`` so the penalty itself is differentiated in the critic's backward pass.
    ``generator`` (a CPU torch.Generator) makes α reproducible.
    """
    alpha = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator).to(real)  # (B, 1, 1, 1)
    x_hat = (real + alpha * (fake - real)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic_score(D, x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def critic_loss(D: nn.Module, real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor,
                gp_weight: float = 10.0, acgan_weight: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """E[D(fake)] - E[D(real)] + gp_weight·GP + acgan_weight·CE(logits(real), labels); fake is detached.

    As in MeRGAN the auxiliary classifier learns from real images only. Returns (loss, stats).
    """
    fake = fake.detach()
    s_real, logits_real, _ = D(real)
    s_fake = critic_score(D, fake)
    wgan = s_fake.mean() - s_real.mean()
    gp = gradient_penalty(D, real, fake, generator)
    ce = F.cross_entropy(logits_real, real_labels)
    loss = wgan + gp_weight * gp + acgan_weight * ce
    return loss, {"d/wasserstein": -wgan.item(), "d/gp": gp.item(), "d/ce_real": ce.item()}


def generator_loss(D: nn.Module, fake: torch.Tensor, fake_labels: torch.Tensor,
                   acgan_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """-E[D(fake)] + acgan_weight·CE(logits(fake), c): fool the critic and be classified as c."""
    s_fake, logits_fake, _ = D(fake)
    ce = F.cross_entropy(logits_fake, fake_labels)
    loss = -s_fake.mean() + acgan_weight * ce
    return loss, {"g/adv": -s_fake.mean().item(), "g/ce_fake": ce.item()}
