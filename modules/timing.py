"""Wall time of a model call: the one latency timer of the framework (the paradigms' latency columns)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def median_ms(call: Callable[[], Any], device: torch.device, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of ``call()`` in ms over ``repeats`` timed calls after ``warmup`` untimed ones, under
    ``torch.no_grad``; on a GPU each call is bracketed by ``cuda.synchronize`` (kernels run asynchronously)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + max(repeats, 1)):
            sync()
            start = time.perf_counter()
            call()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)
