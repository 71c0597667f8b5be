"""A paradigm owns its run: what to check, what to build, how to run it.

``Paradigm`` is the small interface every kind of paper implements:

- ``validate(cfg)``: cheap checks, before anything loads or is written (the group schemas come first);
- ``build(cfg) -> (LightningModule, LightningDataModule)``;
- ``run(ctx)``: by default today's pipeline, made of the reusable steps below:
  ``prepare`` (build, stage weights) -> ``fit`` (resumes from the folder's last checkpoint) ->
  ``evaluate`` (validate + test over the module's grid and conditions) -> ``finish`` (results.json, tables,
  plot, the paradigm's exports, W&B). A paradigm with several stages or a loop over tasks recombines them.
- hooks: ``schemas(cfg)`` (its groups' schemas), ``check_resources(cfg)`` (e.g. a GPU memory estimate),
  ``before_eval`` / ``after_eval`` (re-factor weights; costs and exports after the grid evaluation).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.core.config import RunError, get
from experiments.core.runtime import RunContext, apply_init_from, checkpoint_of, load_trained_weights
from experiments.core.schema import EvalSchema, options


class Paradigm:
    name = ""
    PLOT_METRICS: tuple[str, ...] = ()

    # --- what a paradigm defines ---------------------------------------------------------------
    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {}

    def validate(self, cfg: DictConfig) -> None:
        pass

    def check_resources(self, cfg: DictConfig) -> None:
        """Before a training run loads anything: stop early when it cannot fit (nothing by default)."""

    def build(self, cfg: DictConfig) -> tuple[Any, Any]:
        raise NotImplementedError

    def before_eval(self, cfg: DictConfig, module) -> None:
        pass

    def after_eval(self, cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
        return []

    def export_submodel(self, cfg: DictConfig, module, sub, folder: Path) -> list[Path]:
        """Save sub-model ``sub`` of a trained ``module`` into ``folder`` (``task=select``, ``export.submodels``);
        the written paths. By default a paradigm exports nothing."""
        return []

    def trained_module(self, cfg: DictConfig, run_dir: Path):
        """The module of a finished run, rebuilt from its config with its trained weights (and an earlier
        stage's), re-factored as before its evaluation."""
        module, _ = self.build(cfg)
        if get(cfg, "init_from"):
            load_trained_weights(module, checkpoint_of(cfg.init_from), "init_from", require_all=False)
        load_trained_weights(module, checkpoint_of(run_dir, "select.run_dir"), "select.run_dir")
        self.before_eval(cfg, module)
        return module

    def finished_results(self, ctx: RunContext) -> dict[str, Any] | None:
        """The results of a run that already finished in this folder (it is not redone); by default a folder
        holding ``results.json`` is finished. A paradigm that writes results.json part-way (after each task of
        a loop) says here when its run is complete."""
        return ctx.finished_results()

    # --- the default run and its steps ---------------------------------------------------------
    def run(self, ctx: RunContext) -> float | None:
        module, datamodule = self.prepare(ctx)
        trainer = self.fit(ctx, module, datamodule)
        return self.finish(ctx, module, self.evaluate(ctx, module, datamodule, trainer), trainer)

    def prepare(self, ctx: RunContext) -> tuple[Any, Any]:
        """Build the module and data, start from an earlier stage's weights, describe the run folder."""
        import lightning.pytorch as pl

        from experiments.results.files import write_run_info

        pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
        module, datamodule = self.build(ctx.cfg)
        stage = apply_init_from(ctx, module)
        write_run_info(ctx.run_dir, ctx.cfg.seed, ctx.overrides, init_from=stage)
        if stage:
            print(f"stage: starting from {stage['checkpoint']} ({stage['tensors']} trained tensors)")
        return module, datamodule

    def fit(self, ctx: RunContext, module, datamodule, trainer=None):
        """Train, continuing from this folder's last checkpoint when there is one."""
        trainer = trainer or ctx.trainer()
        resume = ctx.resume_checkpoint()
        ctx.remember_config()
        if resume is not None:
            print(f"resuming from {resume}")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
        return trainer

    def evaluate(self, ctx: RunContext, module, datamodule, trainer) -> dict[str, Any]:
        """Validate + test every sub-model of the module's grid (and every evaluation condition)."""
        from experiments.core.callbacks import PeakMemory, peak_memory_mib, reset_peak_memory
        from experiments.results.files import summarize

        self.before_eval(ctx.cfg, module)
        device = trainer.strategy.root_device  # where validate/test run (module.device may still be cpu)
        reset_peak_memory(device)
        grid = len(getattr(module, "eval_grid", [None]))
        print(f"evaluating {grid} sub-model{'s' * (grid != 1)} on the validation and test splits")
        trainer.validate(module, datamodule=datamodule, verbose=False)
        val = dict(trainer.callback_metrics)
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics: dict[str, Any] = {k: float(v) for k, v in {**val, **trainer.callback_metrics}.items()}
        metrics.update(summarize(metrics, ctx.cfg.eval.metric, ctx.cfg.eval.higher_is_better))
        for callback in trainer.callbacks:
            if isinstance(callback, PeakMemory):
                metrics.update(callback.peaks)
        metrics["memory/eval_peak_mib"] = peak_memory_mib(device)  # the grid evaluation just run
        check_finite_metrics(metrics)
        return metrics

    def finish(self, ctx: RunContext, module, metrics: dict[str, Any], trainer) -> float | None:
        """The paradigm's post-evaluation steps (costs, generations, judge, exports), W&B, then table + plot and
        results.json last: a folder holding results.json has everything; a failure in any step before it leaves
        no results.json, and the same command redoes the steps after training (training resumes at its end)."""
        from experiments.results.wandb_log import finish_wandb
        from experiments.results.files import best_line, objective_key, write_results

        if not trainer.is_global_zero:
            return None
        exported = self.after_eval(ctx.cfg, module, metrics, ctx.run_dir)  # may add keys (costs per sub-model)
        table = write_results(ctx.run_dir, metrics, self.PLOT_METRICS, before_marker=lambda: finish_wandb(trainer, metrics))
        print(f"\nResults per sub-model ({ctx.run_dir}):\n{table}")
        print(best_line(metrics, ctx.cfg.eval.metric))
        if "memory/train_peak_mib" in metrics:
            print(f"peak memory ({metrics['memory/kind']}): train {metrics['memory/train_peak_mib']:.0f} MiB, "
                  f"evaluation {metrics['memory/eval_peak_mib']:.0f} MiB")
        for path in exported:
            print(f"exported: {path}")
        return metrics.get(objective_key(ctx.cfg.eval.metric))

    def evaluate_checkpoint(self, ctx: RunContext) -> float | None:
        """``task=eval``: rebuild from config, load a train run's checkpoint, evaluate and finish."""
        import lightning.pytorch as pl

        path = checkpoint_of(options(ctx.cfg, "eval", EvalSchema).ckpt_path or "", "eval.ckpt_path")
        pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
        module, datamodule = self.build(ctx.cfg)
        apply_init_from(ctx, module)  # a later stage's checkpoint holds only what that stage trained
        load_trained_weights(module, path, "eval.ckpt_path")
        trainer = ctx.trainer(with_callbacks=False)
        return self.finish(ctx, module, self.evaluate(ctx, module, datamodule, trainer), trainer)


def check_finite_metrics(metrics: dict[str, Any]) -> None:
    """A NaN or infinite evaluation metric is an error (a diverged model), never a table cell or a "best"."""
    import math

    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise RunError(f"evaluation gave {bad[0]}={metrics[bad[0]]} ({len(bad)} non-finite metrics): the model "
                       "diverged or the evaluation data is empty; no results.json, no best/*, no export")
