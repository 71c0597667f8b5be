"""Tasks that run.py dispatches. Each checks its config first, then hands over.

``train`` and ``eval`` belong to the paradigm named by ``paradigm`` (experiments/paradigms/): the group
schemas (core + the paradigm's own) and the paradigm's ``validate`` run before anything loads or is written,
then the paradigm's ``run`` (or ``evaluate_checkpoint``) does the work. The other tasks stand alone.
"""
from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

from experiments.core.config import ConfigError, get, require_choice

# Tasks that need no training paradigm: "module:function".
STANDALONE = {"report": "experiments.results.report:report_task",
              "estimate": "experiments.core.estimate:estimate_task",
              "benchmark": "experiments.benchmarks:benchmark_task",
              "select": "experiments.results.select:select_task"}
TASKS = ("train", "eval", *STANDALONE)
# The options of standalone tasks that a training config carries too (report.* is read at the end of a multirun):
# checked on every task, so that a typo there (+report.metirc=x) fails before training, not after it.
TASK_SCHEMAS = {"report": "experiments.results.report:ReportSchema",
                "select": "experiments.results.select:SelectSchema"}


def resolve(path: str) -> Any:
    """``"module:name"`` → the object (the core names the layers above it by string, never by import)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def task_schemas() -> dict[str, type]:
    return {group: resolve(path) for group, path in TASK_SCHEMAS.items()}


def run_task(cfg: DictConfig) -> Any:
    from experiments.core.config import check_targets
    from experiments.core.runtime import RESULTS, RunContext

    task = require_choice(cfg, "task", TASKS)
    check_targets(cfg)  # at every depth, before anything is built
    if task in STANDALONE:
        with RunContext.from_hydra(cfg).owned():
            return resolve(STANDALONE[task])(cfg)
    from experiments.rehearsal import mark_run, rehearse

    cfg = rehearse(cfg)  # rehearsal=tiny: the preset shrunk onto a CPU (docs/rehearsal.md); else unchanged
    paradigm = validate(cfg, task)
    if get(cfg, "threads"):
        import torch

        torch.set_num_threads(int(cfg.threads))
    ctx = RunContext.from_hydra(cfg)
    if task == "eval":
        with ctx.owned():
            return paradigm.evaluate_checkpoint(ctx)
    ctx.accept()  # reads only: a refused command leaves the folder as it was
    done = paradigm.finished_results(ctx)
    if done is not None:  # rerunning a finished run (or sweep job) on its folder: keep what is there
        print(f"already finished: {ctx.run_dir / RESULTS} (checkpoint.resume=false reruns it)")
        from experiments.results.files import objective_key

        return done.get(objective_key(cfg.eval.metric))
    with ctx.owned():  # one writer per folder; .hydra/ written now that the command is accepted
        result = paradigm.run(ctx)
        mark_run(ctx.run_dir, cfg)  # a rehearsal says so in its record (results.json rewritten last, atomically)
        return result


def validate(cfg: DictConfig, task: str = "train", machine: bool = True):
    """Every check that needs no model or data: schemas, the paradigm's own checks, and (``machine``) what
    this machine can do (an accelerator, GPU memory). Returns the paradigm."""
    from experiments import paradigms
    from experiments.core.schema import check_all, check_core

    paradigm = paradigms.get_paradigm(require_choice(cfg, "paradigm", tuple(paradigms.names())))
    own = paradigm.schemas(cfg)
    check_core(cfg, replaced=tuple(own))
    check_all(cfg, {**task_schemas(), **own})
    if get(cfg, "init_from"):
        from experiments.core.runtime import checkpoint_of

        checkpoint_of(cfg.init_from)  # a stage's source must exist before anything starts
    check_data_file(cfg)
    paradigm.validate(cfg)
    if machine:
        if task == "train":
            paradigm.check_resources(cfg)  # first: "does not fit the GPU" is worth knowing on any machine
        check_accelerator(cfg)
    return paradigm


DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet", ".arrow")


def check_data_file(cfg: DictConfig) -> None:
    """``data.source`` that names a local file (a path, or a data-file suffix) must exist before anything loads;
    a hub id (``org/name``) is left to the data module."""
    from pathlib import Path

    source = get(cfg, "data.source")
    if not isinstance(source, str):
        return
    local = source.startswith(("/", "./", "../", "~")) or source.endswith(DATA_FILE_SUFFIXES)
    if local and not Path(source).expanduser().exists():
        raise ConfigError(f"data.source={source!r}: no such file or folder; give the path of a data file")


def check_accelerator(cfg: DictConfig) -> None:
    from experiments.core.strategies import check_strategy

    check_strategy(cfg)  # FSDP / DeepSpeed: GPUs, the deepspeed package, a float-stored 4-bit base
    accelerator = get(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA device; "
                              "valid choices here: cpu, auto (trainer=cpu)")
