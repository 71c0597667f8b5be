"""FoCL generators: shapes, the gradient penalty's values, the losses, the cVAE."""
import pytest
import torch
import torch.nn as nn

from modules.continual.gan import build_gan, critic_loss, generator_loss, gradient_penalty
from modules.continual.vae import ConditionalVAE, vae_loss


class LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        score = x.flatten(1) @ self.w  # D(x) = <w, x>: gradient w everywhere
        return score, torch.zeros(len(x), 2), x.flatten(1)


def test_gradient_penalty_zero_for_unit_norm_linear_critic_positive_otherwise():
    torch.manual_seed(0)
    real, fake = torch.randn(16, 1, 4, 4), torch.randn(16, 1, 4, 4)
    w = torch.randn(16)
    assert gradient_penalty(LinearCritic(w / w.norm()), real, fake).item() == pytest.approx(0.0, abs=1e-10)
    # ‖w‖ = 3 -> (3 - 1)² = 4 exactly, for every interpolate
    assert gradient_penalty(LinearCritic(3 * w / w.norm()), real, fake).item() == pytest.approx(4.0, rel=1e-5)
    assert gradient_penalty(LinearCritic(0.5 * w / w.norm()), real, fake).item() == pytest.approx(0.25, rel=1e-5)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_generator_and_critic_shapes(shape):
    torch.manual_seed(0)
    G, D = build_gan(shape, num_classes=10)
    z, c = torch.randn(5, G.z_dim), torch.arange(5)
    x = G(z, c)
    assert x.shape == (5, *shape) and x.abs().max() <= 1.0
    score, logits, feats = D(x)
    assert score.shape == (5,) and logits.shape == (5, 10) and feats.shape == (5, D.feature_dim)


def test_losses_are_finite_and_backpropagate():
    torch.manual_seed(0)
    G, D = build_gan((1, 8, 8), num_classes=3, width=32)
    real, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.randint(3, (8,))
    fake = G(torch.randn(8, G.z_dim), y)
    d_loss, d_stats = critic_loss(D, real, y, fake)
    d_loss.backward()
    assert torch.isfinite(d_loss) and G.net[0].weight.grad is None  # fake is detached for the critic
    g_loss, _ = generator_loss(D, fake, y)
    g_loss.backward()
    assert torch.isfinite(g_loss) and G.net[0].weight.grad is not None
    assert set(d_stats) == {"d/wasserstein", "d/gp", "d/ce_real"}


def test_bad_image_shape_is_one_line():
    with pytest.raises(ValueError) as err:
        build_gan((1, 30, 30), 10)
    assert "image_shape=(1, 30, 30)" in str(err.value) and "\n" not in str(err.value)


def test_cvae_decodes_like_a_generator_and_its_loss_is_the_negative_elbo():
    torch.manual_seed(0)
    vae = ConditionalVAE((1, 8, 8), 10, z_dim=4, hidden=32)
    x, c = torch.rand(6, 1, 8, 8) * 2 - 1, torch.arange(6)
    assert vae(torch.randn(6, 4), c).shape == (6, 1, 8, 8)
    recon, mu, logvar = vae.reconstruct(x, c)
    # with mu = 0, logvar = 0 the KL is 0 and the loss is half the summed squared error
    loss, _ = vae_loss(recon, x, torch.zeros_like(mu), torch.zeros_like(logvar))
    assert loss.item() == pytest.approx(0.5 * (recon - x).pow(2).sum().item() / 6, rel=1e-6)
    loss2, stats = vae_loss(recon, x, torch.ones_like(mu), torch.zeros_like(logvar))
    assert stats["vae/kl"] == pytest.approx(0.5 * 4, rel=1e-6)  # ½ Σ mu² per sample
