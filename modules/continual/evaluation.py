"""Scoring a continual generator: a classifier trained on real data, per-class accuracy of generated
samples, a Fréchet distance in that classifier's feature space, the accuracy matrix and forgetfulness.

Accuracy matrix ``A`` (T x T): ``A[t, j]`` = accuracy of samples generated for the classes of task j,
scored by the classifier, after learning task t (defined for j <= t; NaN above the diagonal).

Forgetfulness (the drop from just after learning a task to the end, averaged over the earlier tasks):

    F = 1/(T-1) · Σ_{j=0}^{T-2} (A[j, j] − A[T-1, j])

(0 when nothing is forgotten; negative when later tasks improved an old one; undefined for T = 1,
returned as 0). Fréchet distance between feature sets with means μ₁, μ₂ and covariances Σ₁, Σ₂:

    FD = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}),

with Tr (Σ₁Σ₂)^{1/2} = Σ sqrt(eig(Σ₁^{1/2} Σ₂ Σ₁^{1/2})) (a symmetric matrix: eigh, no complex sqrtm).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# --- the scoring classifier ----------------------------------------------------------------------

class SmallClassifier(nn.Module):
    """A small CNN: 2 convs (+ pool for images above 16x16) -> ``features`` (B, F) -> logits (B, K)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.config = {"image_shape": tuple(image_shape), "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim}
        c, h, w = image_shape
        pool = 2 if h > 16 else 1  # 8x8 keeps its resolution; 28/32 are pooled twice
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(pool),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(pool),
            nn.Flatten(), nn.Linear(2 * width * (h // pool ** 2) * (w // pool ** 2), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, K)


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int = 20,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy over shuffled mini-batches, seeded; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(labels), batch_size):
            sel = perm[i:i + batch_size]
            loss = F.cross_entropy(model(images[sel]), labels[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)])


def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, images) == labels).float().mean().item()


def save_classifier(model: SmallClassifier, path: str | Path) -> None:
    """Weights + constructor config in one file (what ``load_classifier`` rebuilds from)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config, "state_dict": model.state_dict()}, path)


def load_classifier(path: str | Path, key: str = "eval.classifier_checkpoint") -> SmallClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path} not found: train one with evaluation.train_classifier + "
                                f"save_classifier, or point {key} at an existing file")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = SmallClassifier(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


# --- generated samples -----------------------------------------------------------------------------

@torch.no_grad()
def generate(G: nn.Module, classes: Sequence[int], n_per_class: int, seed: int = 0,
             batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """n_per_class samples of each class from fixed, seeded noise: (N, C, H, W), labels (N,)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    labels = torch.as_tensor(list(classes), dtype=torch.long).repeat_interleave(n_per_class)
    z = torch.randn(len(labels), G.z_dim, generator=gen)
    was_training = G.training
    G.eval()
    x = torch.cat([G(z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)).cpu()
                   for i in range(0, len(labels), batch_size)])
    G.train(was_training)
    return x, labels


def per_class_accuracy(G: nn.Module, classifier: nn.Module, classes: Sequence[int], n_per_class: int = 200,
                       seed: int = 0) -> dict[int, float]:
    """{class: fraction of its generated samples that the classifier labels as that class}."""
    x, y = generate(G, classes, n_per_class, seed)
    hit = (predict(classifier.eval(), x) == y).float()
    return {int(c): hit[y == c].mean().item() for c in classes}


def task_accuracies(per_class: dict[int, float], tasks: Sequence[Sequence[int]]) -> list[float]:
    """Mean per-class accuracy within each task (NaN for a task with no scored class)."""
    out = []
    for task in tasks:
        vals = [per_class[c] for c in task if c in per_class]
        out.append(float(np.mean(vals)) if vals else float("nan"))
    return out


# --- accuracy matrix and forgetfulness ---------------------------------------------------------------

def new_accuracy_matrix(num_tasks: int) -> np.ndarray:
    return np.full((num_tasks, num_tasks), np.nan)


def forgetfulness(acc: np.ndarray, upto: int | None = None) -> float:
    """F = 1/(T-1) Σ_{j<T-1} (A[j, j] − A[T-1, j]) over the first T = ``upto`` tasks (default: all rows).

    ``acc[t, j]``: accuracy on task j after learning task t. Returns 0.0 for T = 1.
    """
    acc = np.asarray(acc, dtype=float)
    T = acc.shape[0] if upto is None else upto
    if acc.ndim != 2 or acc.shape[0] < T or acc.shape[1] < T:
        raise ValueError(f"accuracy matrix of shape {acc.shape} has fewer than {T} x {T} entries")
    if T < 2:
        return 0.0
    drops = [acc[j, j] - acc[T - 1, j] for j in range(T - 1)]
    if np.isnan(drops).any():
        raise ValueError("accuracy matrix has NaN where forgetfulness needs A[j, j] and A[T-1, j]")
    return float(np.mean(drops))


def average_accuracy(acc: np.ndarray, t: int | None = None) -> float:
    """Mean of row t over the tasks seen so far (0..t); default: the last row."""
    acc = np.asarray(acc, dtype=float)
    t = acc.shape[0] - 1 if t is None else t
    return float(np.mean(acc[t, : t + 1]))


# --- Fréchet distance --------------------------------------------------------------------------------

def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_moments(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁ Σ₂)^{1/2} (float64, eigh-based)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    r = _sqrt_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    return float(max(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross, 0.0))


def frechet_distance(feats1, feats2) -> float:
    """Fréchet distance between two feature sets (N1, F), (N2, F) via their means and covariances."""
    a = np.asarray(feats1.detach().cpu() if torch.is_tensor(feats1) else feats1, np.float64)
    b = np.asarray(feats2.detach().cpu() if torch.is_tensor(feats2) else feats2, np.float64)
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


@torch.no_grad()
def classifier_frechet(G: nn.Module, classifier: SmallClassifier, real_images: torch.Tensor,
                       real_labels: torch.Tensor, classes: Sequence[int], n_per_class: int = 200,
                       seed: int = 0) -> float:
    """FD between classifier features of real images of ``classes`` and as many generated per class."""
    keep = torch.isin(real_labels, torch.as_tensor(list(classes)))
    x_fake, _ = generate(G, classes, n_per_class, seed)
    classifier.eval()
    device = next(classifier.parameters()).device
    feats = lambda x: torch.cat([classifier.features(x[i:i + 500].to(device)).cpu()  # noqa: E731
                                 for i in range(0, len(x), 500)])
    return frechet_distance(feats(real_images[keep]), feats(x_fake))


def inception_fid(real: torch.Tensor, fake: torch.Tensor, weights_path: str | Path | None,
                  key: str = "eval.inception_weights") -> float:
    """FID with Inception-v3 features (torchmetrics + torch-fidelity), only from a local weights file
    (``pt_inception-2015-12-05`` as torch-fidelity names it; nothing is downloaded). Images in [-1, 1];
    grey images are repeated to 3 channels."""
    if weights_path is None or not Path(weights_path).is_file():
        raise FileNotFoundError(f"{key}={weights_path}: Inception FID needs a local Inception-v3 weights file "
                                f"(no download here); use the classifier Fréchet distance instead")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception lives there)
    except ImportError as err:
        raise ImportError(f"Inception FID needs torchmetrics and torch-fidelity ({err.name} is missing)") from err
    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights_path))
    to3 = lambda x: ((x.clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1) if x.shape[1] == 1 else (x.clamp(-1, 1) + 1) / 2  # noqa: E731
    fid.update(to3(real), real=True)
    fid.update(to3(fake), real=False)
    return float(fid.compute())
