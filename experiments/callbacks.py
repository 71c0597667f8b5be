"""Lightning callbacks of the framework (the pure pieces live in modules/)."""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

MIB = 1024 ** 2


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak (the CPU's process RSS peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA max allocated since the last reset on a GPU; on a CPU the process's peak RSS so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    from experiments.memory import process_peak_rss_bytes

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
