"""FoCL regularisers between G_t and G_{t-1}: zero when equal, positive otherwise; old-class replay."""
import copy

import pytest
import torch
import torch.nn as nn

from modules.continual.evaluation import SmallClassifier, save_classifier
from modules.continual.gan import build_gan
from modules.continual.regularizers import (EWC, Combined, FeatureAlignment, NoRegularizer, PixelAlignment,
                                            ReplaySampler, estimate_fisher, make_feature_extractor,
                                            make_regularizer)

SHAPE = (1, 8, 8)


@pytest.fixture
def gan():
    torch.manual_seed(0)
    return build_gan(SHAPE, num_classes=4, width=32)


def perturbed(G):
    G2 = copy.deepcopy(G)
    with torch.no_grad():
        for p in G2.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return G2


def phis(D, tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "clf.pt"
    save_classifier(SmallClassifier(SHAPE, 4, width=8, feature_dim=16), path)
    return {"critic": make_feature_extractor("critic", critic=D),
            "classifier": make_feature_extractor("classifier", checkpoint=path),
            "random": make_feature_extractor("random", image_shape=SHAPE)}


def test_alignment_is_zero_for_identical_generators_and_positive_otherwise(gan, tmp_path):
    G, D = gan
    replay = ReplaySampler([0, 2], G.z_dim, 16, seed=0)
    z, c = replay.sample()
    G_same, G_diff = copy.deepcopy(G).eval(), perturbed(G)
    regs = {"pixel": PixelAlignment(1.0), **{f"feature[{k}]": FeatureAlignment(phi, 1.0)
                                              for k, phi in phis(D, tmp_path).items()}}
    regs["combined"] = Combined(PixelAlignment(0.5), FeatureAlignment(regs["feature[random]"].phi, 2.0))
    for name, reg in regs.items():
        assert reg(G, G_same, z, c).item() == 0.0, name
        assert reg(G, G_diff, z, c).item() > 0.0, name
    # combined is the weighted sum of its terms
    expected = 0.5 * regs["pixel"](G, G_diff, z, c) + 2.0 * regs["feature[random]"](G, G_diff, z, c)
    assert regs["combined"](G, G_diff, z, c).item() == pytest.approx(expected.item(), rel=1e-6)
    assert NoRegularizer()(G, G_diff, z, c).item() == 0.0


def test_pixel_alignment_value_and_gradient_reaches_only_the_new_generator(gan):
    G, _ = gan
    G_old = perturbed(G).requires_grad_(False)
    z, c = ReplaySampler([1], G.z_dim, 8).sample()
    loss = PixelAlignment(3.0)(G, G_old, z, c)
    manual = 3.0 * (G(z, c) - G_old(z, c)).pow(2).sum() / 8
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    loss.backward()
    assert G.net[0].weight.grad is not None and G_old.net[0].weight.grad is None


def test_ewc_zero_at_old_parameters_positive_elsewhere(gan):
    G, _ = gan
    G_old = copy.deepcopy(G).requires_grad_(False)
    replay = ReplaySampler([0, 1], G.z_dim, 16, seed=0)
    fisher = estimate_fisher(G_old, replay, n_batches=3)
    assert set(fisher) == {n for n, _ in G.named_parameters()}
    assert all((f >= 0).all() for f in fisher.values())
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
    assert mean.item() == pytest.approx(1.0, rel=1e-5)  # normalised to mean 1
    z, c = replay.sample()
    ewc = EWC(fisher, weight=2.0)
    assert ewc(G, G_old, z, c).item() == 0.0
    G_new = perturbed(G)
    assert ewc(G_new, G_old, z, c).item() > 0.0
    # hand value on one tensor: Σ F (θ - θ_old)²
    name = "net.0.bias"
    one = EWC({name: fisher[name]}, 1.0)(G_new, G_old, z, c)
    diff = dict(G_new.named_parameters())[name] - dict(G_old.named_parameters())[name]
    assert one.item() == pytest.approx((fisher[name] * diff.pow(2)).sum().item(), rel=1e-5)


def test_fisher_sees_old_classes_only(gan):
    G, _ = gan
    seen = []

    class Spy(nn.Module):
        def __init__(self, G):
            super().__init__()
            self.G = G

        def forward(self, z, c):
            seen.append(c.clone())
            return self.G(z, c)

    estimate_fisher(Spy(G), ReplaySampler([1, 3], G.z_dim, 10), n_batches=2)
    assert set(torch.cat(seen).tolist()) == {1, 3}


def test_replay_sampler_draws_old_classes_only_balanced_and_seeded():
    a, b = ReplaySampler([4, 0, 2], z_dim=3, batch_size=9, seed=7), ReplaySampler([0, 2, 4], 3, 9, seed=7)
    za, ca = a.sample()
    zb, cb = b.sample()
    assert set(ca.tolist()) == {0, 2, 4} and torch.bincount(ca).tolist() == [3, 0, 3, 0, 3]
    assert torch.equal(za, zb) and torch.equal(ca, cb) and za.shape == (9, 3)
    with pytest.raises(ValueError):
        ReplaySampler([], 3, 9)


def test_missing_feature_extractor_checkpoint_is_one_line(tmp_path):
    missing = tmp_path / "nowhere" / "phi.pt"
    with pytest.raises(FileNotFoundError) as err:
        make_feature_extractor("classifier", checkpoint=missing)
    msg = str(err.value)
    assert "\n" not in msg and "regularizer.phi_checkpoint=" in msg and str(missing) in msg


def test_unknown_choices_name_the_key():
    with pytest.raises(ValueError) as err:
        make_feature_extractor("vgg")
    assert "regularizer.phi='vgg'" in str(err.value) and "critic, classifier, random" in str(err.value)
    with pytest.raises(ValueError) as err:
        make_regularizer("l1")
    assert "regularizer.name='l1'" in str(err.value)
    with pytest.raises(ValueError, match="needs a feature extractor"):
        make_regularizer("feature")
