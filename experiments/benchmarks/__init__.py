"""Benchmarks against the peers, one module each; ``task=benchmark`` runs the one ``benchmark.kind`` names
(``lora``: ours vs PEFT LoRA/QLoRA, the default; ``kronecker``: KronA vs PEFT LoKr, Kronecker vs dense)."""
from __future__ import annotations

import importlib

KINDS = {"lora": "experiments.benchmarks.lora", "kronecker": "experiments.benchmarks.kronecker"}


def benchmark_task(cfg):
    from experiments.benchmarks.lora import benchmark_node
    from experiments.core.config import ConfigError

    kind = benchmark_node(cfg).get("kind")  # no benchmark group: conf/benchmark/cpu_tiny.yaml
    if kind not in KINDS:
        raise ConfigError(f"benchmark.kind={kind!r} is not an option; valid choices: {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind]).benchmark_task(cfg)
