"""Lightning callbacks and plugins of the framework (the pure pieces live in modules/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

MIB = 1024 ** 2


def process_peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``; it cannot be reset)."""
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak (the CPU's process RSS peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA max allocated since the last reset on a GPU; on a CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return process_peak_rss_bytes() / MIB


class PeakMemory(Callback):
    """Records ``memory/train_peak_mib`` (fit: training + its validation) for results.json and the loggers.
    What it measures is in ``memory/kind``: ``cuda_max_allocated`` or ``cpu_peak_rss``."""

    def __init__(self) -> None:
        self.peaks: dict[str, float | str] = {}

    # trainer.strategy.root_device, not pl_module.device: Lightning moves the module back to the CPU when
    # fit ends, before on_fit_end (a GPU run would otherwise report the CPU's RSS)
    def on_fit_start(self, trainer, pl_module) -> None:
        reset_peak_memory(trainer.strategy.root_device)

    def on_fit_end(self, trainer, pl_module) -> None:
        device = trainer.strategy.root_device
        self.peaks = {"memory/train_peak_mib": peak_memory_mib(device),
                      "memory/kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"}


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps and once more when training ends, so a
    killed run loses at most N steps and ``task=eval`` always finds the final weights."""

    def __init__(self, dirpath: str, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, filename="last", save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the checkpoint, then rename it over the old one: a kill during
    the write leaves the previous checkpoint intact (os.replace is atomic on one filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
