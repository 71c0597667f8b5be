"""What each sub-model of a causal LM costs, measured after the grid evaluation (``task=select`` reads it).

For every evaluated sub-model, on one forward of a fixed 1 x ``SEQ_LEN`` batch of token ids:

- ``flops@<sub>``: FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, attention;
  bitsandbytes' 4-bit matmul given its formula, 2 x outputs x inputs);
- ``latency_ms@<sub>``: the median wall time of that forward (``REPEATS`` timed, after one untimed);
- ``params@<sub>`` and ``memory_mb@<sub>``: the parameters of the modules the forward ran (a shallower exit
  skips the later decoder layers), a nested adapter's rank-sliced tensors counted at the current rank
  (A[:b], B[:, :b]), in elements and in MiB as stored (a 4-bit base at its packed size).
"""
from __future__ import annotations

import math
from typing import Any

SEQ_LEN = 64
REPEATS = 5


def _sliced(module, p) -> tuple[float, bool]:
    """The fraction of ``p`` the module's current rank uses (1 for tensors without a rank dimension)."""
    r_max = getattr(module, "r_max", None)
    rank = getattr(module, "rank", None)  # NestedLoRALinear, KronALinear
    if not isinstance(r_max, int) or not isinstance(rank, int) or r_max not in tuple(p.shape):
        return 1.0, False
    return rank / r_max, True


def _logical_numel(p) -> int:
    state = getattr(p, "quant_state", None)  # bitsandbytes Params4bit: packed storage, original shape here
    return int(state.shape.numel()) if state is not None and hasattr(state, "shape") else p.numel()


def _gemm_4bit_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    """bitsandbytes' 4-bit matmul (a custom op FlopCounterMode does not know): 2 x outputs x inputs."""
    return 2 * math.prod(out_shape) * a_shape[-1]


def custom_flops() -> dict:
    """FLOP formulas for the custom ops a quantized base runs (none when bitsandbytes is not loaded)."""
    import torch

    try:
        return {torch.ops.bitsandbytes.gemm_4bit: _gemm_4bit_flops}
    except (AttributeError, RuntimeError):
        return {}


def forward_costs(model, input_ids) -> dict[str, float]:
    """FLOPs, latency and the size of what one forward at the model's current sub-model uses."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modules.timing import median_ms

    ran: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: ran.add(id(mod))) for m in model.modules()]
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom_flops()) as counter:
            model(input_ids=input_ids)
    finally:
        for h in hooks:
            h.remove()
    params = size = 0.0
    counted: set[int] = set()  # a tied weight (embeddings = LM head) is one tensor
    for module in model.modules():
        if id(module) not in ran:
            continue
        for p in module.parameters(recurse=False):
            if id(p) in counted:
                continue
            counted.add(id(p))
            fraction, _ = _sliced(module, p)
            params += fraction * _logical_numel(p)
            size += fraction * p.numel() * p.element_size()
    latency = median_ms(lambda: model(input_ids=input_ids), input_ids.device, warmup=1, repeats=REPEATS)
    return {"flops": float(counter.get_total_flops()), "latency_ms": latency,
            "params": round(params), "memory_mb": size / 2**20}


def cost_metrics(module, grid) -> dict[str, Any]:
    """``<cost>@<sub>`` for every sub-model of ``grid`` (the module is left at its largest sub-model)."""
    import torch

    from modules.submodel import metric_key

    model = module.model
    device = next(model.parameters()).device
    vocab = int(getattr(model.config, "vocab_size", 256))
    ids = (torch.arange(SEQ_LEN, device=device) % max(vocab - 1, 1)).unsqueeze(0) + 1
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {}
    try:
        for sub in grid:
            module.nested.apply(sub)
            for name, value in forward_costs(model, ids).items():
                out[metric_key(name, sub)] = value
    finally:
        module.nested.apply(module.nested.space.largest)
        model.train(was_training)
    return out
