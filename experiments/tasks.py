"""Tasks that run.py dispatches: train, eval, report. Each validates its config first.

The training paradigm (``paradigm: lm | vision``) supplies validate/build/after_eval; fitting,
grid evaluation and the results files are the same for every paper.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.config import ConfigError, get, instantiate, require_choice, require_int

TASKS = ("train", "eval", "report", "estimate", "benchmark")
# Tasks that need no training paradigm: module path and function.
STANDALONE = {"report": ("experiments.report", "report_task"), "estimate": ("experiments.memory", "estimate_task"),
              "benchmark": ("experiments.benchmark", "benchmark_task")}
PARADIGMS = {"lm": "experiments.lm", "vision": "experiments.vision"}


def run_task(cfg: DictConfig) -> Any:
    task = require_choice(cfg, "task", TASKS)
    if task in STANDALONE:
        module, function = STANDALONE[task]
        return getattr(importlib.import_module(module), function)(cfg)
    paradigm = importlib.import_module(PARADIGMS[require_choice(cfg, "paradigm", tuple(PARADIGMS))])
    require_int(cfg, "seed")
    require_int(cfg, "trainer.max_steps", minimum=-1)
    paradigm.validate(cfg)  # before anything is loaded or written
    if task == "train" and cfg.paradigm == "lm":  # the estimate models (Q)LoRA training of a causal LM
        from experiments.memory import check_fits

        check_fits(cfg)  # a GPU run that cannot fit estimate.gpu_gib stops here (skipped on the CPU)
    if get(cfg, "threads"):
        import torch

        torch.set_num_threads(require_int(cfg, "threads", minimum=1))
    return train(cfg, paradigm) if task == "train" else evaluate(cfg, paradigm)


def build_trainer(cfg: DictConfig, run_dir: Path, with_callbacks: bool = True):
    from experiments.loggers import build_loggers

    if get(cfg, "trainer.strategy") == "ddp_spawn" and get(cfg, "trainer.accelerator") == "cpu":
        import torch

        torch.multiprocessing.set_sharing_strategy("file_system")  # fd sharing fails on some hosts
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] if with_callbacks else []
    return instantiate(cfg.trainer, logger=build_loggers(cfg) or False, callbacks=callbacks,
                       default_root_dir=str(run_dir))


def run_dir_of() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def train(cfg: DictConfig, paradigm) -> float | None:
    import lightning.pytorch as pl

    from experiments.results import write_run_info

    run_dir = run_dir_of()
    pl.seed_everything(cfg.seed, workers=True)
    module, datamodule = paradigm.build(cfg)
    trainer = build_trainer(cfg, run_dir)
    if trainer.is_global_zero:
        write_run_info(run_dir, cfg.seed, _overrides())
    trainer.fit(module, datamodule=datamodule)
    return finish(cfg, paradigm, trainer, module, datamodule, run_dir)


def evaluate(cfg: DictConfig, paradigm) -> float | None:
    """Score every sub-model of a trained checkpoint (from task=train) on the test split."""
    import lightning.pytorch as pl
    import torch

    ckpt = get(cfg, "eval.ckpt_path")
    if not ckpt or not Path(ckpt).is_file():
        raise ConfigError(f"eval.ckpt_path={ckpt!r}: no such checkpoint file; give a last.ckpt written by task=train")
    run_dir = run_dir_of()
    pl.seed_everything(cfg.seed, workers=True)
    module, datamodule = paradigm.build(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    missing = [k for k, p in module.named_parameters() if p.requires_grad and k not in state]
    if missing:
        raise ConfigError(f"eval.ckpt_path={ckpt!r} does not match this config "
                          f"({len(missing)} trainable weights missing, e.g. {missing[0]})")
    module.load_state_dict(state, strict=False)
    return finish(cfg, paradigm, build_trainer(cfg, run_dir, with_callbacks=False), module, datamodule, run_dir)


def finish(cfg: DictConfig, paradigm, trainer, module, datamodule, run_dir: Path) -> float | None:
    """Grid-evaluate the final weights, write results.json + table + plot, run the paradigm's exports."""
    from experiments.loggers import finish_wandb
    from experiments.results import (markdown_table, plot_submodel_curve, submodel_table, summarize,
                                     write_csv, write_json)

    from experiments.callbacks import PeakMemory, peak_memory_mib, reset_peak_memory

    if hasattr(paradigm, "before_eval"):
        paradigm.before_eval(cfg, module)
    device = trainer.strategy.root_device  # where validate/test run (module.device may still be cpu)
    reset_peak_memory(device)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    val = dict(trainer.callback_metrics)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in {**val, **trainer.callback_metrics}.items()}
    metrics.update(summarize(metrics, cfg.eval.metric, cfg.eval.higher_is_better))
    for callback in trainer.callbacks:
        if isinstance(callback, PeakMemory):
            metrics.update(callback.peaks)
    metrics["memory/eval_peak_mib"] = peak_memory_mib(device)  # the grid evaluation just run
    if not trainer.is_global_zero:
        return None
    write_json(run_dir / "results.json", metrics)
    header, rows = submodel_table(metrics)
    table = markdown_table(header, rows)
    (run_dir / "results.md").write_text(table + "\n")
    write_csv(run_dir / "results.csv", header, rows)
    plot_submodel_curve(metrics, [n for n in paradigm.PLOT_METRICS if any(k.startswith(n) for k in metrics)],
                        run_dir / "results.png")
    exported = paradigm.after_eval(cfg, module, metrics, run_dir)
    write_json(run_dir / "results.json", metrics)  # after_eval may add keys (e.g. costs per sub-model)
    print(f"\nResults per sub-model ({run_dir}):\n{table}")
    if "best/submodel" in metrics:
        print(f"best: {metrics['best/submodel']}  {cfg.eval.metric}={metrics['best/' + cfg.eval.metric]:.4f}")
    if "memory/train_peak_mib" in metrics:
        print(f"peak memory ({metrics['memory/kind']}): train {metrics['memory/train_peak_mib']:.0f} MiB, "
              f"evaluation {metrics['memory/eval_peak_mib']:.0f} MiB")
    for path in exported:
        print(f"exported: {path}")
    finish_wandb(trainer, metrics)
    return metrics.get(f"best/{cfg.eval.metric}")


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)
