"""What a full-scale LM run will cost before it starts: wall time and GPU-hours per phase (docs/memory.md).

- training: tokens = optimizer steps x accumulation x batch x sequence length x devices (an upper bound:
  every sequence counted at ``data.max_length``); FLOPs per token = 2N forward + backward (4N when every
  weight is trained, 2N when the base is frozen: an adapter needs only the input gradients) + 2N when
  gradient checkpointing recomputes the forward; time = FLOPs / (peak x ``estimate.train_mfu``).
- evaluation: generations = sub-models x answers (validation + test) x new tokens, 2N FLOPs each, at the
  decode efficiency of a batch of ``data.eval_batch_size`` sequences: the roofline bound
  ``min(train_mfu, intensity / ridge)`` with intensity = 2 x batch / bytes per weight (decoding reads every
  weight once per step) and ridge = peak FLOP/s / memory bandwidth;
- multiple-choice evaluation (MMLU): sub-models x questions x choices forwards of one prompt each.

The GPU figures (peak, bandwidth) and the training MFU are ``estimate.*`` options; the default MFU comes from
the H200 measurement in docs/benchmark.md (PEFT QLoRA, LLaMA-2-7B shape: 5,758 tokens/s x 6N FLOPs per token
= 23.5 % of 989 TFLOP/s).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from experiments.core.config import get
from experiments.core.schema import TrainerSchema, options

# Rows per split of the sources the full-scale presets name, from their dataset cards (data/fixtures.py cites them).
SPLIT_ROWS = {
    "alpaca": {"train": 52_002},
    "gsm8k": {"train": 7_473, "test": 1_319},
    "triviaqa": {"train": 138_384, "validation": 17_944, "test": 17_210},
    "mmlu": {"test": 14_042, "dev": 285, "validation": 1_531},
}


def split_rows(source: str, spec: str) -> int | None:
    """Rows of an HF split string (``train``, ``train[:95%]``, ``train[500:]``) of a known source; None if unknown."""
    m = re.fullmatch(r"(\w+)(?:\[(-?\d*%?):(-?\d*%?)\])?", spec.strip())
    total = SPLIT_ROWS.get(source, {}).get(m.group(1)) if m else None
    if total is None:
        return None
    if not m.group(2) and not m.group(3):
        return total

    def at(text: str, default: int) -> int:
        if not text:
            return default
        value = round(total * float(text[:-1]) / 100) if text.endswith("%") else int(text)
        return value + total if value < 0 else value

    return max(0, min(total, at(m.group(3), total)) - max(0, at(m.group(2), 0)))


def flops_per_token(params: float, full_finetune: bool, recompute: bool) -> float:
    return 2 * params + (4 if full_finetune else 2) * params + (2 * params if recompute else 0)


def decode_efficiency(batch: int, bytes_per_weight: float, peak_tflops: float, bandwidth_tbps: float,
                      train_mfu: float) -> float:
    ridge = peak_tflops / bandwidth_tbps  # FLOPs per byte where compute, not memory, limits
    return min(train_mfu, (2 * batch / bytes_per_weight) / ridge)


@dataclass
class Phase:
    name: str
    work: str           # what is counted, in words
    flops: float
    efficiency: float   # fraction of peak assumed
    devices: int

    def hours(self, peak_tflops: float) -> float:
        return self.flops / (peak_tflops * 1e12 * self.efficiency * self.devices) / 3600


def _devices(cfg: DictConfig) -> int:
    d = options(cfg, "trainer", TrainerSchema).devices
    return d if isinstance(d, int) and d > 0 else int(cfg.estimate.devices)  # -1 (all): the estimate's count


def cost_phases(cfg: DictConfig, params: float) -> tuple[list[Phase], list[str]]:
    """The phases of the composed LM config and the assumptions that could not be read from it."""
    peak, bandwidth = float(cfg.estimate.peak_tflops), float(cfg.estimate.bandwidth_tbps)
    mfu = float(cfg.estimate.train_mfu)
    devices, notes = _devices(cfg), []
    source = str(get(cfg, "data.source"))
    splits = dict(get(cfg, "data.splits") or {})
    batch, seq = int(get(cfg, "data.batch_size")), int(get(cfg, "data.max_length"))
    trainer = options(cfg, "trainer", TrainerSchema)
    accumulate, steps = trainer.accumulate_grad_batches, trainer.max_steps
    if steps > 0:
        sequences = steps * accumulate * batch * devices
    else:
        rows = split_rows(source, splits.get("train", "train"))
        if rows is None:
            rows = 0
            notes.append(f"training rows of data.source={source} unknown: training not counted")
        sequences = int(trainer.max_epochs) * rows
    full = get(cfg, "adapter.kind") in (None, "none")  # no adapter group: full fine-tuning
    recompute = bool(get(cfg, "model.gradient_checkpointing"))
    tokens = sequences * seq
    train = Phase("training", f"{sequences:,} sequences x {seq} tokens ({'full' if full else 'adapter'} fine-tuning"
                  f"{', recomputed forward' if recompute else ''})", tokens * flops_per_token(params, full, recompute),
                  mfu, devices)
    grid = len(list(get(cfg, "adapter.eval_ranks") or [None])) * len(list(
        get(cfg, "depth.eval_exits") or get(cfg, "depth.exits") or [None]))
    answers = 0
    for split, limit in (("validation", get(cfg, "data.limit_val")), ("test", get(cfg, "data.limit_test"))):
        rows = split_rows(source, splits.get(split, split))
        if rows is None and limit is None:
            notes.append(f"{split} rows of data.source={source} unknown")
        answers += min(x for x in (rows, limit) if x is not None) if (rows, limit) != (None, None) else 0
    new_tokens = int(get(cfg, "eval.max_new_tokens") or 0)  # no such key: a paradigm that does not generate
    bytes_per_weight = 0.5 * (1 + 1 / 16) if get(cfg, "quantization.enabled") else 2.0  # NF4 + absmax / bf16
    eff = decode_efficiency(int(get(cfg, "data.eval_batch_size") or batch), bytes_per_weight, peak, bandwidth, mfu)
    phases = [train, Phase("evaluation: generations", f"{grid} sub-models x {answers:,} answers x {new_tokens} new tokens",
                           grid * answers * new_tokens * 2 * params, eff, devices)]
    mc = get(cfg, "data.mc_eval")
    if mc:
        questions = split_rows(str(mc.source), str(mc.get("split", "test"))) or 0
        if mc.get("limit"):
            questions = min(questions, int(mc.limit))
        phases.append(Phase("evaluation: multiple choice", f"{grid} sub-models x {questions:,} questions x 4 choices "
                            f"x {seq} tokens", grid * questions * 4 * seq * 2 * params, mfu, devices))
    return phases, notes


def format_cost(phases: list[Phase], cfg: DictConfig, notes: list[str]) -> tuple[str, dict[str, Any]]:
    from experiments.results.files import markdown_table

    peak = float(cfg.estimate.peak_tflops)
    rows, total = [], 0.0
    for p in phases:
        h = p.hours(peak)
        total += h * p.devices
        rows.append([p.name, p.work, f"{p.flops:.3g}", f"{100 * p.efficiency:.1f}%", f"{h:.2f}", f"{h * p.devices:.2f}"])
    gpu = str(cfg.estimate.gpu)
    text = "\n".join([f"Time estimate on {gpu} ({peak:g} TFLOP/s bf16, {float(cfg.estimate.bandwidth_tbps):g} TB/s): "
                      f"{total:.1f} GPU-hours", "",
                      markdown_table(["phase", "work", "FLOPs", "of peak", "wall hours", "GPU-hours"], rows)]
                     + [f"note: {n}" for n in notes])
    data = {"gpu": gpu, "gpu_hours": total,
            "phases": [{"name": p.name, "work": p.work, "flops": p.flops, "efficiency": p.efficiency,
                        "devices": p.devices, "wall_hours": p.hours(peak)} for p in phases], "notes": notes}
    return text, data


def cost_line(phases: list[Phase], cfg: DictConfig) -> str:
    """One line for the start of a run: the time per phase and the GPU-hours, before anything loads."""
    peak = float(cfg.estimate.peak_tflops)
    parts = [f"{p.name} {p.hours(peak):.2f} h" for p in phases]
    total = sum(p.hours(peak) * p.devices for p in phases)
    return f"time estimate on {cfg.estimate.gpu}: {', '.join(parts)}; {total:.1f} GPU-hours (task=estimate for the table)"

