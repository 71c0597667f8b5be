"""FoCL's protocol for publishable numbers: a leak-free φ, the validation carve, the gradient-normalised regulariser.

- φ = classifier (``phi_data=seen``, the default) is trained at task t on real images of tasks 0..t only: the
  classes it was trained on, and its parameters do not depend on the images of later tasks;
- the validation carve is disjoint from the training images, seeded, recorded, and a run logs val/* next to test/*;
- ``normalized_gradients``: each term's gradient norm is ``ratio`` times the main loss's, on a batch.
"""
import json

import pytest
import torch
import torch.nn as nn

from tests.test_continual import IN_PROCESS, _cfg, _run_in_process


def _digits(cfg):
    from experiments.core.config import instantiate

    data = instantiate(cfg.data, seed=cfg.seed, batches_per_step=1, steps_per_task=1)
    data.setup()
    return data


# --- φ never sees a future task ------------------------------------------------------------------
def test_the_default_phi_is_trained_only_on_the_classes_seen_so_far(tmp_path, monkeypatch):
    from experiments.paradigms import continual as P

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = _cfg(["eval.classifier_epochs=1"])
    assert cfg.regularizer.phi_data == "seen" and cfg.regularizer.phi == "classifier"
    data = _digits(cfg)
    trained_on = []
    real = P._train_cached_classifier
    monkeypatch.setattr(P, "_train_cached_classifier", lambda path, d, *a, classes=None, **k: (
        trained_on.append(sorted(set(P.classifier_training_data(d, classes)[1].tolist()))) or real(
            path, d, *a, classes=classes, **k)))
    for t in range(1, len(data.stream)):
        P.phi_classifier(cfg, data, t)
        assert trained_on[-1] == sorted(data.stream.seen_classes(t)), t  # tasks 0..t, nothing later
    leaky = _cfg(["eval.classifier_epochs=1", "regularizer.phi_data=all"])
    P.phi_classifier(leaky, data, 1)
    assert trained_on[-1] == list(range(10))  # the labelled leaking variant: every class, at task 1


def test_phi_at_task_t_does_not_depend_on_the_images_of_later_tasks(tmp_path, monkeypatch):
    from experiments.paradigms import continual as P

    cfg = _cfg(["eval.classifier_epochs=2"])
    data = _digits(cfg)
    t = 2
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    phi = P.phi_classifier(cfg, data, t).state_dict()
    images, labels = data.train
    future = torch.isin(labels, torch.as_tensor([c for task in data.stream.tasks[t + 1:] for c in task]))
    assert future.any()
    data.train = (torch.where(future[:, None, None, None], -images, images), labels)  # other future images
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))  # no cache: trained again
    again = P.phi_classifier(cfg, data, t).state_dict()
    assert all(torch.equal(phi[k], again[k]) for k in phi)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    leaky = P.phi_classifier(_cfg(["eval.classifier_epochs=2", "regularizer.phi_data=all"]), data, t).state_dict()
    assert not all(torch.equal(phi[k], leaky[k]) for k in phi)  # the leaking φ does see them


# --- the validation carve ------------------------------------------------------------------------
def test_the_validation_carve_is_disjoint_seeded_and_recorded():
    cfg = _cfg([])
    data, same = _digits(cfg), _digits(cfg)
    train, val = data.train[0].flatten(1), data.val[0].flatten(1)
    assert len(val) == round(0.1 * (len(train) + len(val)))
    assert torch.equal(val, same.val[0].flatten(1))  # the same seed, the same carve
    pairs = (train[:, None, :] == val[None, :, :]).all(-1)  # no validation image is a training image
    duplicates_in_source = (val[:, None, :] == val[None, :, :]).all(-1).sum() - len(val)
    assert duplicates_in_source == 0 and not pairs.any()
    other = _digits(_cfg(["data.val_seed=5"]))
    assert not torch.equal(other.val[0], data.val[0])
    info = data.carve_info()
    assert info["data/n_val"] == len(val) and info["data/val_seed"] == cfg.seed and info["data/val_fraction"] == 0.1


def test_a_run_logs_validation_measures_next_to_the_test_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_dir = _run_in_process(tmp_path, "feature", ["regularizer=feature", "regularizer.weight=0.1"])
    r = json.loads((run_dir / "results.json").read_text())
    for split in ("val", "test"):
        for key in ("acc@after=t1,task=t0", "avg_acc@after=t1", "forgetfulness@after=t1", "frechet@after=t1",
                    "avg_acc"):
            assert f"{split}/{key}" in r, f"{split}/{key}"
    for measure in ("avg_acc", "forgetfulness", "frechet"):
        assert f"final/val/score@measure={measure}" in r and f"final/score@measure={measure}" in r
    assert r["final/val/score@measure=avg_acc"] == r["val/avg_acc"]
    assert r["final/score@measure=avg_acc"] == r["test/avg_acc"]
    assert r["final/val/score@measure=frechet"] != r["final/score@measure=frechet"]  # other real images
    assert r["data/n_val"] > 0 and r["regularizer/phi_data"] == "seen"


@pytest.mark.parametrize("overrides, message", [
    (["data.val_fraction=0"], "data.val_fraction=0"),
    (["regularizer.normalize=grad", "regularizer.grad_ratio=0"], "regularizer.grad_ratio=0.0: valid: a finite number > 0"),
    (["regularizer.normalize=grad", "generator=cvae", "regularizer.phi=random"], "regularizer.normalize=grad is implemented"),
    (["regularizer.phi_data=future"], "regularizer.phi_data"),
])
def test_bad_protocol_options_are_one_line_errors(overrides, message):
    from experiments.core import tasks
    from experiments.core.config import ConfigError

    with pytest.raises(ConfigError) as err:
        tasks.validate(_cfg(overrides), machine=False)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- the gradient-normalised protocol --------------------------------------------------------------
def _flat(gs):
    return torch.cat([g.flatten() for g in gs])


@pytest.mark.parametrize("ratio", [0.1, 1.0, 3.0])
def test_normalized_gradients_put_each_term_at_the_target_ratio_of_the_main_gradient(ratio):
    from modules.continual.regularizers import normalized_gradients

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    params = list(net.parameters())
    x = torch.randn(16, 5)
    y = net(x)
    main = y.pow(2).mean()
    terms = [1e3 * (y - 1).pow(2).sum(), 1e-3 * y.abs().sum()]  # scales six orders of magnitude apart
    g_main = _flat(torch.autograd.grad(main, params, retain_graph=True))
    g_terms = [_flat(torch.autograd.grad(t, params, retain_graph=True)) for t in terms]
    grads, scales = normalized_gradients(params, main, terms, ratio)
    for s, g in zip(scales, g_terms):
        assert (s * g).norm() / g_main.norm() == pytest.approx(ratio, rel=1e-5)
    expected = g_main + sum(s * g for s, g in zip(scales, g_terms))
    assert torch.allclose(_flat(grads), expected, rtol=1e-5, atol=1e-7)
    # the same as a backward pass of main + Σ s_i term_i with s_i held constant
    net.zero_grad()
    y = net(x)
    (y.pow(2).mean() + scales[0] * 1e3 * (y - 1).pow(2).sum() + scales[1] * 1e-3 * y.abs().sum()).backward()
    assert torch.allclose(_flat([p.grad for p in params]), expected, rtol=1e-4, atol=1e-6)


def test_a_term_with_zero_gradient_stays_zero_and_the_weight_cancels():
    from modules.continual.regularizers import normalized_gradients

    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    main = (w ** 2).sum()
    grads, _ = normalized_gradients([w], main, [(w - w.detach()).pow(2).sum()], 1.0)  # G_t = G_{t-1}: zero pull
    assert torch.equal(grads[0], 2 * w.detach())
    a, _ = normalized_gradients([w], (w ** 2).sum(), [5.0 * (w - 3).pow(2).sum()], 0.5)
    b, _ = normalized_gradients([w], (w ** 2).sum(), [0.01 * (w - 3).pow(2).sum()], 0.5)
    assert torch.allclose(a[0], b[0])  # a term's weight does not matter under the protocol


def test_the_generator_step_uses_the_normalised_gradients():
    """One generator step with grad_ratio: the measured ratio of the regulariser's gradient to the GAN loss's."""
    from modules.continual.gan import build_gan, generator_loss
    from modules.continual.regularizers import PixelAlignment
    from modules.continual.trainer import ContinualGANTrainer, freeze

    torch.manual_seed(0)
    G, D = build_gan((1, 8, 8), 4, z_dim=8, width=16)
    old = freeze(build_gan((1, 8, 8), 4, z_dim=8, width=16)[0])
    captured = {}

    class Probe(torch.optim.SGD):
        def step(self, closure=None):
            captured["grad"] = _flat([p.grad for p in G.parameters()]).clone()

    loop = ContinualGANTrainer(G, D, Probe(G.parameters(), lr=0.1), torch.optim.SGD(D.parameters(), lr=0.1),
                               grad_ratio=2.0, seed=3)
    loop.begin_task(1, [0, 1], 8)
    rng, replay = loop.rng.get_state(), loop.replay.rng.get_state()
    stats = loop.generator_step([2, 3], 8, old, PixelAlignment(7.0))
    # recompute the two gradients from the same noise
    loop.rng.set_state(rng), loop.replay.rng.set_state(replay)
    classes = torch.as_tensor([2, 3])
    c = classes[torch.randint(2, (8,), generator=loop.rng)]
    params = list(G.parameters())
    gan, _ = generator_loss(D, G(loop._noise(8), c), c, loop.acgan_weight)
    g_gan = _flat(torch.autograd.grad(gan, params))
    zr, cr = loop.replay.sample()
    g_reg = _flat(torch.autograd.grad(PixelAlignment(7.0)(G, old, zr, cr), params))
    assert (captured["grad"] - g_gan).norm() / g_gan.norm() == pytest.approx(2.0, rel=1e-4)
    assert torch.allclose(captured["grad"], g_gan + stats["g/reg_scale0"] * g_reg, rtol=1e-4, atol=1e-6)
