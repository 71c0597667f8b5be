"""The one latency timer (modules/timing.py) behind every latency column."""
import time

import torch

from modules.timing import median_ms


def test_median_ms_times_each_call_after_the_warmup_without_gradients():
    calls, grad_enabled = [], []

    def call():
        grad_enabled.append(torch.is_grad_enabled())
        calls.append(time.perf_counter())
        time.sleep(0.02 if len(calls) <= 2 else 0.005)  # the two warm-up calls are slow: left out of the median

    ms = median_ms(call, torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and not any(grad_enabled)
    assert 5.0 <= ms < 20.0
