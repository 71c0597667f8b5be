"""The Lightning module of FoCL / MeRGAN-style continual learning of a conditional generator.

``ContinualGAN`` wraps the pure pieces of ``modules/continual/`` with manual optimisation:

- ``kind="wgan_gp"``: a conditional WGAN-GP with an auxiliary classifier (``gan.build_gan``). One training
  step = one generator step: the loader's batch holds ``n_critic`` critic batches; each is one critic step
  (``ContinualGANTrainer.critic_step``: gradient penalty ``gp_weight``, AC-GAN loss on real images), then one
  generator step (``generator_step``: adversarial + AC-GAN loss + the regulariser towards the previous
  generator on a replay batch of old classes). Only the generator's optimizer step is counted by Lightning
  (the critic's optimizer is stepped directly), so ``trainer.global_step`` counts generator steps.
- ``kind="cvae"``: a conditional VAE (``vae.ConditionalVAE``), one optimizer (``generator``), negative ELBO +
  the regulariser on replayed old classes.

Optimizers: ``optimizer_groups()`` names ``generator`` and ``critic`` (the config's ``optimizer`` maps each
name to a factory, see ``BaseModule.configure_optimizers``). The frozen previous generator G_{t-1} is a
reference (``add_reference("previous", ...)``), never checkpointed: ``start_task(t, previous_weights)``
rebuilds it from the weights the run saved when task t-1 ended, and builds the task's regulariser (EWC's
Fisher is recomputed from G_{t-1}: a deterministic function of its weights and the seed). The checkpoint holds
the task index and the loop state (the noise generators, the replay sampler), next to BaseModule's weights,
optimizers and global RNG state, so a killed run continues exactly.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from modules.base_module import BaseModule
from modules.continual.gan import build_gan
from modules.continual.regularizers import (ReplaySampler, estimate_fisher, make_feature_extractor,
                                            make_regularizer)
from modules.continual.trainer import ContinualGANTrainer
from modules.continual.vae import ConditionalVAE, vae_loss

KINDS = ("wgan_gp", "cvae")


class ContinualGAN(BaseModule):
    def __init__(self, image_shape: Sequence[int], num_classes: int, tasks: Sequence[Sequence[int]],
                 kind: str = "wgan_gp", z_dim: int | None = None, width: int | None = None, n_critic: int = 5,
                 gp_weight: float = 10.0, acgan_weight: float = 1.0, beta: float = 1.0,
                 regularizer: Mapping[str, Any] | None = None, replay_batch: int = 64, replay_critic: bool = False,
                 fisher_batches: int = 10, seed: int = 0, phi_classifier: nn.Module | None = None,
                 optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        if kind not in KINDS:
            raise ValueError(f"generator.kind={kind!r} is not an option; valid choices: {', '.join(KINDS)}")
        self.automatic_optimization = False
        self.kind, self.image_shape, self.num_classes = kind, tuple(image_shape), int(num_classes)
        self.tasks = [tuple(int(c) for c in t) for t in tasks]
        if kind == "wgan_gp":
            self.G, self.D = build_gan(self.image_shape, self.num_classes, z_dim, width)
        else:
            self.G = ConditionalVAE(self.image_shape, self.num_classes, z_dim or 16, width or 256)
            self.D = None
            n_critic = 1  # one loader batch = one VAE step
        self.n_critic, self.gp_weight, self.acgan_weight, self.beta = n_critic, gp_weight, acgan_weight, beta
        self.reg_cfg = dict(regularizer or {"name": "none"})
        self.grad_ratio = (float(self.reg_cfg.get("grad_ratio", 1.0)) if self.reg_cfg.get("normalize", "none") == "grad"
                           else None)  # the tuning-free protocol: each term's gradient at grad_ratio x the GAN loss's
        self.replay_batch, self.replay_critic, self.fisher_batches = replay_batch, replay_critic, fisher_batches
        self.seed = seed
        if phi_classifier is not None:
            self.add_reference("phi_classifier", phi_classifier)
        self.task = 0
        self._regularizer: list[nn.Module] = []  # not a submodule: frozen or borrowed (the critic), not trained
        self._loop_to_restore: dict | None = None
        self.restored_task: int | None = None  # the task index a loaded checkpoint was written in
        self.loop: ContinualGANTrainer | None = None
        self.vae_rng: torch.Generator | None = None
        self.vae_replay: ReplaySampler | None = None

    # --- tasks --------------------------------------------------------------------------------
    def old_classes(self, task: int | None = None) -> tuple[int, ...]:
        task = self.task if task is None else task
        return tuple(c for t in self.tasks[:task] for c in t)

    @property
    def previous_generator(self) -> nn.Module | None:
        return getattr(self, "previous", None) if self.task > 0 else None

    @property
    def regularizer(self) -> nn.Module | None:
        return self._regularizer[0] if self._regularizer else None

    def start_task(self, task: int, previous_weights: Mapping[str, torch.Tensor] | None = None,
                   phi_classifier: nn.Module | None = None) -> None:
        """Before fitting task ``task``: G_{t-1} from ``previous_weights`` (required for t > 0), φ = classifier for
        this task (``phi_classifier``: the caller trains it on what the learner may see by task t), the
        regulariser."""
        self.task = int(task)
        self._regularizer = []
        if phi_classifier is not None:
            self.add_reference("phi_classifier", phi_classifier)
        if self.task == 0:
            return
        if previous_weights is None:
            raise ValueError(f"task {task} needs the previous generator's weights")
        previous = copy.deepcopy(self.G)
        previous.load_state_dict(previous_weights)
        self.add_reference("previous", previous.to(next(self.G.parameters()).device))
        self._regularizer = [self.build_regularizer()]

    def build_regularizer(self) -> nn.Module:
        cfg, old = self.reg_cfg, self.old_classes()
        name = cfg.get("name", "none")
        phi = fisher = None
        if name in ("feature", "combined"):
            phi = make_feature_extractor(cfg.get("phi", "critic"), critic=self.D,
                                         classifier=getattr(self, "phi_classifier", None),
                                         image_shape=self.image_shape, seed=self.seed)
        if name == "ewc":
            replay = ReplaySampler(old, self.G.z_dim, self.replay_batch, seed=self.seed + 31 * self.task)
            fisher = estimate_fisher(self.previous, replay, n_batches=self.fisher_batches)
        return make_regularizer(name, weight=float(cfg.get("weight", 1.0)), pixel_weight=cfg.get("pixel_weight"),
                                feature_weight=cfg.get("feature_weight"), phi=phi, fisher=fisher)

    # --- optimisation -------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = {"generator": list(self.G.parameters())}
        if self.D is not None:
            groups["critic"] = list(self.D.parameters())
        return groups

    def on_train_start(self) -> None:
        super().on_train_start()  # the global RNG state of a resumed run
        if self.regularizer is not None:
            self.regularizer.to(self.device)
        state, self._loop_to_restore = self._loop_to_restore, None
        old = self.old_classes()
        if self.kind == "wgan_gp":
            opt_g, opt_d = self.optimizers()
            # the critic's raw optimizer: its steps are not counted, so global_step = generator steps
            self.loop = ContinualGANTrainer(self.G, self.D, opt_g, opt_d.optimizer, self.n_critic, self.gp_weight,
                                            self.acgan_weight, self.replay_critic, self.seed,
                                            backward=self.manual_backward, grad_ratio=self.grad_ratio)
            self.loop.begin_task(self.task, old, self.replay_batch)
            if state is not None and state["task"] == self.task:  # mid-task: the very same noise streams
                self.loop.load_loop_state(state, old, self.replay_batch)
            elif state is not None:  # a new task: the main noise stream continues, a fresh replay sampler
                self.loop.rng.set_state(state["rng"])
            return
        self.vae_rng = torch.Generator().manual_seed(self.seed)
        self.vae_replay = (ReplaySampler(old, self.G.z_dim, self.replay_batch, self.seed + 7919 * (self.task + 1))
                           if old else None)
        if state is not None:
            self.vae_rng.set_state(state["rng"])
            if state["task"] == self.task and state["replay"] is not None and self.vae_replay is not None:
                self.vae_replay.load_state_dict(state["replay"])

    def training_step(self, batch, batch_idx):
        x, y = batch  # (n_critic * B, C, H, W), (n_critic * B,)
        G_old = self.previous_generator
        if self.kind == "wgan_gp":
            stats: dict[str, float] = {}
            for xi, yi in zip(x.chunk(self.n_critic), y.chunk(self.n_critic)):
                stats = self.loop.critic_step(xi, yi, G_old)
            stats.update(self.loop.generator_step(self.tasks[self.task], len(yi), G_old, self.regularizer))
            self.loop.step += 1
        else:
            stats = self.vae_training_step(x, y, G_old)
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, batch_size=len(y))

    def vae_training_step(self, x, y, G_old) -> dict[str, float]:
        opt = self.optimizers()
        recon, mu, logvar = self.G.reconstruct(x, y, self.vae_rng)
        loss, stats = vae_loss(recon, x, mu, logvar, self.beta)
        if G_old is not None and self.vae_replay is not None:
            zr, cr = self.vae_replay.sample()
            reg = self.regularizer(self.G, G_old, zr.to(self.device), cr.to(self.device))
            stats["g/reg"] = reg.item()
            loss = loss + reg
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        return stats

    # --- checkpoints: the task index and the loop state ---------------------------------------
    def loop_state(self) -> dict | None:
        if self.kind == "wgan_gp":
            return self.loop.loop_state() if self.loop is not None else None
        if self.vae_rng is None:
            return None
        return {"task": self.task, "rng": self.vae_rng.get_state(),
                "replay": self.vae_replay.state_dict() if self.vae_replay is not None else None}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["continual"] = {"task": self.task, "loop": self.loop_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("continual") or {}
        self.restored_task, self._loop_to_restore = state.get("task"), state.get("loop")
