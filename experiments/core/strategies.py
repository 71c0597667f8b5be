"""Checks of ``trainer.strategy`` that Lightning makes only once the model is built (or never, in one line).

A strategy is a Lightning name (``ddp``, ``ddp_spawn``, ``fsdp``, ``deepspeed_stage_2``...) or a node with
a ``_target_`` (conf/trainer/fsdp.yaml, deepspeed.yaml). FSDP and DeepSpeed run on CUDA only; DeepSpeed is
an optional package; FSDP shards only floating-point tensors, so a 4-bit base must be stored in a float
dtype (``bnb_4bit_quant_storage``, bitsandbytes' FSDP-QLoRA support), not the default uint8.
"""
from __future__ import annotations

import importlib.util

from omegaconf import DictConfig

from experiments.core.config import ConfigError, get

FLOAT_STORAGE = ("bfloat16", "float16", "float32")


def strategy_family(cfg: DictConfig) -> tuple[str | None, str]:
    """(``fsdp`` | ``deepspeed`` | None, the strategy as the user wrote it)."""
    strategy = get(cfg, "trainer.strategy")
    shown = str(strategy.get("_target_", strategy)) if isinstance(strategy, DictConfig) else str(strategy)
    name = shown.lower()
    return next((f for f in ("fsdp", "deepspeed") if f in name), None), shown


def check_strategy(cfg: DictConfig) -> None:
    family, shown = strategy_family(cfg)
    if family is None:
        return
    if family == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"trainer.strategy={shown} needs the deepspeed package, which is not installed: "
                          "`pip install deepspeed` on the CUDA machine, or use trainer=fsdp or trainer=ddp")
    if get(cfg, "trainer.accelerator") == "cpu":
        raise ConfigError(f"trainer.strategy={shown}: Lightning runs {family} on CUDA GPUs only; valid "
                          "choices on the CPU: auto, ddp, ddp_spawn (trainer=ddp_cpu)")
    storage = get(cfg, "quantization.config.bnb_4bit_quant_storage")
    if family == "fsdp" and get(cfg, "quantization.enabled") and storage not in FLOAT_STORAGE:
        raise ConfigError(f"quantization.config.bnb_4bit_quant_storage={storage}: FSDP shards only float "
                          "tensors, so a 4-bit base under trainer=fsdp must be stored as one; valid choices: "
                          f"{', '.join(FLOAT_STORAGE)} (bfloat16, the dtype of the rest of the model)")
