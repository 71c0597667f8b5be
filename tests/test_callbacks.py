from pathlib import Path
from types import SimpleNamespace

import torch

from experiments.core.callbacks import PeakMemory, peak_memory_mib

CPU = torch.device("cpu")


def rss_mib() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_cpu_peak_memory_sees_an_allocation_above_the_old_peak():
    before = peak_memory_mib(CPU)
    extra = before - rss_mib() + 128  # enough to lift the process above its earlier high-water mark
    block = torch.ones(int(extra * 1024 ** 2) // 4)  # written, so resident
    after = peak_memory_mib(CPU)
    assert block[-1] == 1 and after - before > 100


def test_peak_memory_callback_reads_the_strategy_device_not_the_module():
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=CPU))
    module = SimpleNamespace(device=torch.device("meta"))  # after fit Lightning has moved the module away
    callback = PeakMemory()
    callback.on_fit_start(trainer, module)
    callback.on_fit_end(trainer, module)
    assert callback.peaks["memory/kind"] == "cpu_peak_rss"
    assert callback.peaks["memory/train_peak_mib"] == peak_memory_mib(CPU)
