"""Lightning callbacks and plugins of the framework (the pure pieces live in modules/)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

MIB = 1024 ** 2


def process_peak_rss_bytes() -> int:
    """The process's peak resident set size so far (it cannot be reset). On Linux the larger of
    ``ru_maxrss``, ``VmHWM`` and the current ``VmRSS``: ``ru_maxrss`` reads approximate per-CPU counters on
    recent kernels and can lag a fresh allocation, while /proc sums them exactly."""
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


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


class FiniteLoss(Callback):
    """Divergence is a failure: the training loss (what ``training_step`` returns, else the logged
    ``train/*`` values, as under manual optimization) is checked every ``every`` optimizer steps and before
    any checkpoint is written; a NaN or infinite one stops the run with one line (RunError) naming the step
    and the last finite loss. Callbacks run before checkpointing, so no checkpoint holds the diverged weights."""

    def __init__(self, every: int, checkpoint_every: int):
        self.every, self.checkpoint_every = max(1, every), max(1, checkpoint_every)
        self.last_finite: tuple[int, float] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (step % self.every and step % self.checkpoint_every and step != trainer.max_steps
                and self.last_finite is not None):  # the first step too: a "last finite loss" to report
            return
        values = {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            values["loss"] = float(loss.detach())
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/") and isinstance(value, torch.Tensor) and value.numel() == 1:
                values[key] = float(value.detach())
        for key, value in values.items():
            if not math.isfinite(value):
                from experiments.core.config import RunError

                last = (f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}"
                        if self.last_finite else "no finite loss before it")
                raise RunError(f"training diverged at step {step}: {key}={value} ({last}); lower optimizer.lr or "
                               "check the data; no results.json, no best/*, no export")
        if values:
            self.last_finite = (step, values.get("loss", next(iter(values.values()))))


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps and once more when training ends, so a
    killed run loses at most N steps and ``task=eval`` always finds the final weights. SIGTERM (Lightning
    stops after the current batch) and Ctrl-C save it too: the same command continues from there."""

    def __init__(self, dirpath: str, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, filename="last", save_last=True, save_top_k=0,
                         every_n_train_steps=every_n_train_steps)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from lightning.pytorch.trainer.states import TrainerFn

        if (isinstance(exception, (SIGTERMException, KeyboardInterrupt)) and trainer.state.fn == TrainerFn.FITTING
                and trainer.global_step != self._last_global_step_saved):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            print(f"interrupted at step {trainer.global_step}: saved {Path(self.dirpath) / 'last.ckpt'}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the checkpoint, then rename it over the old one: a kill during
    the write leaves the previous checkpoint intact (os.replace is atomic on one filesystem)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # a full disk, a read-only folder: torch says "unexpected pos"
            from experiments.core.config import RunError, describe_os_error

            raise RunError(f"cannot write {path}: {describe_os_error(err, tmp)}; the previous checkpoint is "
                           "intact: free space or fix permissions and rerun the same command") from None
        finally:
            tmp.unlink(missing_ok=True)

