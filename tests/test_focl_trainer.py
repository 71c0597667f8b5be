"""FoCL training loop: weight 0 == plain fine-tuning, seeded determinism, exact resume, old-class replay."""
import copy

import torch
import torch.nn as nn

from modules.continual.gan import build_gan
from modules.continual.regularizers import Combined, CriticFeatures, FeatureAlignment, PixelAlignment
from modules.continual.tasks import TaskBatches
from modules.continual.trainer import ContinualGANTrainer, freeze, make_optimizers, train_task
from modules.continual.vae import ConditionalVAE

SHAPE = (1, 8, 8)


def data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(120, *SHAPE, generator=gen) * 2 - 1, torch.arange(4).repeat(30)


def fresh(seed=0):
    torch.manual_seed(seed)
    G, D = build_gan(SHAPE, num_classes=4, width=32)
    return G, D, *make_optimizers(G, D, 1e-3, 1e-3)


def old_generator():
    G_old, _, _, _ = fresh(seed=1)  # different weights: the alignment terms are far from 0
    return freeze(G_old)


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def run(regularizer=None, G_old=None, steps=3, **kw):
    G, D, og, od = fresh()
    x, y = data()
    train_task(G, D, og, od, TaskBatches(x, y, [2, 3], 16, seed=0), [2, 3], G_old=G_old, classes_old=[0, 1],
               regularizer=regularizer, steps=steps, n_critic=2, seed=0, task=1, **kw)
    return params(G), params(D)


def same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


def test_regulariser_at_weight_zero_equals_plain_fine_tuning():
    plain_g, plain_d = run()  # no G_old at all: sequential fine-tuning
    G_old = old_generator()
    for reg in (PixelAlignment(0.0), Combined(PixelAlignment(0.0), FeatureAlignment(torch.nn.Identity(), 0.0))):
        g, d = run(reg, G_old)
        assert same(g, plain_g) and same(d, plain_d)
    g, d = run(PixelAlignment(1.0), G_old)  # a real weight does change the result
    assert not same(g, plain_g)


def test_weight_zero_with_critic_features_leaves_the_critic_as_in_fine_tuning():
    plain_g, plain_d = run()
    torch.manual_seed(0)
    G, D, og, od = fresh()
    x, y = data()
    reg = FeatureAlignment(CriticFeatures(D), 0.0)
    train_task(G, D, og, od, TaskBatches(x, y, [2, 3], 16, seed=0), [2, 3], G_old=old_generator(),
               classes_old=[0, 1], regularizer=reg, steps=3, n_critic=2, seed=0, task=1)
    assert same(params(G), plain_g) and same(params(D), plain_d)


def test_same_seed_same_parameters_other_seed_differs():
    a, _ = run(PixelAlignment(1.0), old_generator())
    b, _ = run(PixelAlignment(1.0), old_generator())
    assert same(a, b)
    G, D, og, od = fresh()
    x, y = data()
    train_task(G, D, og, od, TaskBatches(x, y, [2, 3], 16, seed=0), [2, 3], steps=3, n_critic=2, seed=1)
    assert not same(params(G), run()[0])


def test_resume_from_state_dict_continues_exactly():
    x, y = data()
    G_old = old_generator()

    def trainer_and_batches():
        G, D, og, od = fresh()
        tr = ContinualGANTrainer(G, D, og, od, n_critic=2, seed=3)
        tr.begin_task(1, [0, 1], replay_batch=8)
        return tr, TaskBatches(x, y, [2, 3], 16, seed=0)

    full, batches = trainer_and_batches()
    full.train_task(batches, [2, 3], 4, G_old, PixelAlignment(1.0))
    half, batches = trainer_and_batches()
    half.train_task(batches, [2, 3], 2, G_old, PixelAlignment(1.0))
    ckpt = copy.deepcopy({"trainer": half.state_dict(), "batches": batches.state_dict()})
    resumed, batches2 = trainer_and_batches()
    torch.manual_seed(123)  # the global RNG does not matter
    resumed.load_state_dict(ckpt["trainer"], classes_old=[0, 1], replay_batch=8)
    batches2.load_state_dict(ckpt["batches"])
    assert (resumed.task, resumed.step) == (1, 2)
    resumed.train_task(batches2, [2, 3], 4, G_old, PixelAlignment(1.0))
    assert same(params(resumed.G), params(full.G)) and same(params(resumed.D), params(full.D))


class Recorder(nn.Module):
    """Wraps G_old and records which classes it was asked to generate."""

    def __init__(self, G):
        super().__init__()
        self.G, self.z_dim, self.calls = G, G.z_dim, []

    def forward(self, z, c):
        self.calls.append(c.clone())
        return self.G(z, c)


def test_replay_uses_old_classes_only_for_alignment_and_critic():
    rec = Recorder(old_generator())
    seen_by_reg = []

    class SpyPixel(PixelAlignment):
        def penalty(self, G_new, G_old, z, c_old):
            seen_by_reg.append(c_old.clone())
            return super().penalty(G_new, G_old, z, c_old)

    G, D, og, od = fresh()
    x, y = data()
    batches = TaskBatches(x, y, [2, 3], 16, seed=0)
    train_task(G, D, og, od, batches, [2, 3], G_old=rec, classes_old=[0, 1], regularizer=SpyPixel(1.0),
               steps=3, n_critic=2, replay_critic=True, replay_batch=8, task=1)
    old = torch.cat(rec.calls)
    assert len(rec.calls) == 3 * 2 + 3  # each critic step (replay as real) + each alignment
    assert set(old.tolist()) == {0, 1} and set(torch.cat(seen_by_reg).tolist()) == {0, 1}


def test_cvae_task_runs_with_alignment():
    from modules.continual.trainer import train_vae_task

    torch.manual_seed(0)
    vae = ConditionalVAE(SHAPE, 4, z_dim=4, hidden=32)
    old = freeze(copy.deepcopy(vae))
    opt = torch.optim.Adam(vae.parameters(), 1e-3)
    x, y = data()
    stats = train_vae_task(vae, opt, TaskBatches(x, y, [2, 3], 16), steps=3, vae_old=old, classes_old=[0, 1],
                           regularizer=PixelAlignment(1.0), task=1)
    assert set(stats) == {"vae/rec", "vae/kl"}
