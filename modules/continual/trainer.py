"""The per-task training loop, without Lightning: n_critic critic steps, then one generator step.

One generator step of task t (classes ``classes_now``; old classes ``classes_old`` of tasks < t):

    critic   (x n_critic): real batch (x, y) of the current task; fake = G(z, y);
             loss = critic_loss(D, x, y, fake)  [+ replay: G_{t-1}(z', c') joins the real batch]
    generator:            c ~ U(classes_now); loss = generator_loss(D, G(z, c), c)
             + regularizer(G, G_{t-1}, z', c')  with (z', c') a replay batch of OLD classes only
             [+ replay: generator_loss(D, G(z', c'), c')]

Determinism: all noise (z, class draws, the gradient penalty's α) comes from CPU ``torch.Generator``
objects seeded from ``seed``; the replay batch has its own generator, so a regulariser at weight 0
leaves the main stream (and hence every parameter) identical to plain fine-tuning. The loop state
(task index, step within the task, RNG states) is checkpointable with ``state_dict`` so a wrapper
(e.g. a Lightning module with manual optimisation) can resume a killed run exactly.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn

from .gan import critic_loss, generator_loss
from .regularizers import NoRegularizer, Regularizer, ReplaySampler, normalized_gradients, reg_terms


def freeze(G: nn.Module) -> nn.Module:
    """A frozen copy target: eval mode, no gradients (G_{t-1} after each task)."""
    return G.eval().requires_grad_(False)


class ContinualGANTrainer:
    """Holds G, D, their optimisers and the loop state; ``train_task`` runs (the rest of) one task."""

    def __init__(self, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 n_critic: int = 5, gp_weight: float = 10.0, acgan_weight: float = 1.0, replay_critic: bool = False,
                 seed: int = 0, backward=None, grad_ratio: float | None = None):
        if n_critic < 1:
            raise ValueError(f"n_critic={n_critic} must be >= 1")
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.n_critic, self.gp_weight, self.acgan_weight = n_critic, gp_weight, acgan_weight
        self.replay_critic, self.seed = replay_critic, seed
        # grad_ratio: the tuning-free protocol (regularizers.normalized_gradients); None = the weighted sum
        self.grad_ratio = None if grad_ratio is None else float(grad_ratio)
        self.backward = backward or (lambda loss: loss.backward())  # a Lightning module passes manual_backward
        self.rng = torch.Generator().manual_seed(seed)
        self.task, self.step = 0, 0  # task index, generator steps done within it
        self.replay: ReplaySampler | None = None

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, generator=self.rng).to(self.device)

    # --- one update each ------------------------------------------------------------------------
    def critic_step(self, x: torch.Tensor, y: torch.Tensor, G_old: nn.Module | None = None) -> dict[str, float]:
        x, y = x.to(self.device), y.to(self.device)
        with torch.no_grad():
            fake = self.G(self._noise(len(y)), y)  # MeRGAN: fake labels = the real batch's labels
            if self.replay_critic and G_old is not None and self.replay is not None:
                zr, cr = self.replay.sample()
                zr, cr = zr.to(self.device), cr.to(self.device)
                x, y = torch.cat([x, G_old(zr, cr)]), torch.cat([y, cr])  # old classes as "real"
                fake = torch.cat([fake, self.G(zr, cr)])
        loss, stats = critic_loss(self.D, x, y, fake, self.gp_weight, self.acgan_weight, generator=self.rng)
        self.opt_d.zero_grad(set_to_none=True)
        self.backward(loss)
        self.opt_d.step()
        return stats

    def generator_step(self, classes_now: Sequence[int], batch_size: int, G_old: nn.Module | None = None,
                       regularizer: Regularizer | None = None) -> dict[str, float]:
        classes = torch.as_tensor(list(classes_now), dtype=torch.long)
        c = classes[torch.randint(len(classes), (batch_size,), generator=self.rng)].to(self.device)
        loss, stats = generator_loss(self.D, self.G(self._noise(batch_size), c), c, self.acgan_weight)
        terms: list[torch.Tensor] = []
        if G_old is not None and self.replay is not None:
            zr, cr = self.replay.sample()
            zr, cr = zr.to(self.device), cr.to(self.device)
            regularizer = regularizer or NoRegularizer(0.0)
            if self.grad_ratio is not None and not isinstance(regularizer, NoRegularizer):
                terms = [term(self.G, G_old, zr, cr) for term in reg_terms(regularizer)]
                stats["g/reg"] = sum(t.item() for t in terms)
            else:
                reg = regularizer(self.G, G_old, zr, cr)
                stats["g/reg"] = reg.item()
                loss = loss + reg
            if self.replay_critic:
                replay_loss, _ = generator_loss(self.D, self.G(zr, cr), cr, self.acgan_weight)
                loss = loss + replay_loss
        self.opt_g.zero_grad(set_to_none=True)
        if terms:  # gradients set directly (fp32; Lightning's precision scaling is not applied on this path)
            params = [p for p in self.G.parameters() if p.requires_grad]
            grads, scales = normalized_gradients(params, loss, terms, self.grad_ratio)
            for p, g in zip(params, grads):
                p.grad = g.detach()
            for i, scale in enumerate(scales):
                stats[f"g/reg_scale{i}"] = scale
        else:
            self.backward(loss)
        self.opt_g.step()
        return stats

    # --- a task ---------------------------------------------------------------------------------
    def begin_task(self, task: int, classes_old: Sequence[int], replay_batch: int) -> None:
        """Start task ``task`` at step 0 with a fresh replay sampler over ``classes_old`` (none at task 0)."""
        self.task, self.step = task, 0
        self.replay = (ReplaySampler(classes_old, self.G.z_dim, replay_batch, seed=self.seed + 7919 * (task + 1))
                       if len(classes_old) else None)

    def train_task(self, batches: Iterable, classes_now: Sequence[int], steps: int, G_old: nn.Module | None = None,
                   regularizer: Regularizer | None = None, batch_size: int | None = None,
                   log_every: int = 0) -> list[dict[str, float]]:
        """Run generator steps ``self.step .. steps-1`` of the current task (call ``begin_task`` first).

        ``batches`` yields (images in [-1, 1] (B, C, H, W), labels (B,)) of the current task forever
        (e.g. ``tasks.TaskBatches``); each critic step takes one. Returns logged stats.
        """
        it: Iterator = iter(batches)
        history = []
        self.G.train(), self.D.train()
        while self.step < steps:
            for _ in range(self.n_critic):
                x, y = next(it)
                d_stats = self.critic_step(x, y, G_old)
            g_stats = self.generator_step(classes_now, batch_size or len(y), G_old, regularizer)
            self.step += 1
            if log_every and (self.step % log_every == 0 or self.step == steps):
                history.append({"task": self.task, "step": self.step, **d_stats, **g_stats})
        return history

    # --- checkpointing --------------------------------------------------------------------------
    def loop_state(self) -> dict:
        return {"task": self.task, "step": self.step, "rng": self.rng.get_state(),
                "replay": self.replay.state_dict() if self.replay else None}

    def load_loop_state(self, state: dict, classes_old: Sequence[int] = (), replay_batch: int = 64) -> None:
        self.begin_task(state["task"], classes_old, replay_batch)
        self.step = state["step"]
        self.rng.set_state(state["rng"])
        if state["replay"] is not None and self.replay is not None:
            self.replay.load_state_dict(state["replay"])

    def state_dict(self) -> dict:
        """G, D, both optimisers and the loop state (G_{t-1} is not included: rebuild it from the
        checkpoint written at the end of the previous task)."""
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "loop": self.loop_state()}

    def load_state_dict(self, state: dict, classes_old: Sequence[int] = (), replay_batch: int = 64) -> None:
        self.G.load_state_dict(state["G"]), self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"]), self.opt_d.load_state_dict(state["opt_d"])
        self.load_loop_state(state["loop"], classes_old, replay_batch)


def make_optimizers(G: nn.Module, D: nn.Module, lr_g: float = 1e-4, lr_d: float = 1e-4,
                    betas: tuple[float, float] = (0.0, 0.9)):
    """Adam(β₁=0, β₂=0.9), MeRGAN's / WGAN-GP's defaults."""
    return (torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas),
            torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas))


def train_task(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               real_loader: Iterable, classes_now: Sequence[int], G_old: nn.Module | None = None,
               classes_old: Sequence[int] = (), regularizer: Regularizer | None = None, steps: int = 500,
               n_critic: int = 5, gp: float = 10.0, acgan_weight: float = 1.0, replay_critic: bool = False,
               replay_batch: int = 64, batch_size: int | None = None, seed: int = 0, task: int = 0,
               log_every: int = 0) -> list[dict[str, float]]:
    """One task from step 0 as a plain function (a fresh ``ContinualGANTrainer`` seeded ``seed``)."""
    trainer = ContinualGANTrainer(G, D, opt_g, opt_d, n_critic, gp, acgan_weight, replay_critic, seed)
    trainer.begin_task(task, classes_old if G_old is not None else (), replay_batch)
    return trainer.train_task(real_loader, classes_now, steps, G_old, regularizer, batch_size, log_every)


def train_vae_task(vae: nn.Module, opt: torch.optim.Optimizer, real_loader: Iterable, steps: int,
                   vae_old: nn.Module | None = None, classes_old: Sequence[int] = (),
                   regularizer: Regularizer | None = None, beta: float = 1.0, replay_batch: int = 64,
                   seed: int = 0, task: int = 0) -> dict[str, float]:
    """The VAE alternative: negative ELBO on the current task + regulariser towards the old decoder."""
    from .vae import vae_step

    rng = torch.Generator().manual_seed(seed)
    replay = (ReplaySampler(classes_old, vae.z_dim, replay_batch, seed + 7919 * (task + 1))
              if vae_old is not None and len(classes_old) else None)
    device, it, stats = next(vae.parameters()).device, iter(real_loader), {}
    vae.train()
    for _ in range(steps):
        x, y = next(it)
        extra = None
        if replay is not None:
            zr, cr = replay.sample()
            extra = (regularizer or NoRegularizer(0.0))(vae, vae_old, zr.to(device), cr.to(device))
        stats = vae_step(vae, opt, x.to(device), y.to(device), beta, extra, rng)
    return stats
