"""Continual learning of conditional generative models (FoCL / MeRGAN line of work).

Pure PyTorch pieces, no Lightning or Hydra: a conditional WGAN-GP with an auxiliary classifier and
a conditional VAE (``gan``, ``vae``), regularisers between the frozen previous generator and the
current one (``regularizers``), the task stream (``tasks``), the scoring classifier, Fréchet distance
and forgetfulness (``evaluation``), and the per-task training loop (``trainer``). Images everywhere
are float tensors (B, C, H, W) scaled to [-1, 1]; class labels are int64 (B,).
"""
