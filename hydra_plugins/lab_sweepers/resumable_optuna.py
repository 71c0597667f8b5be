"""Hyper-parameter search that resumes: Hydra's Optuna sweeper with a study kept in the sweep folder.

``hydra/sweeper=optuna_resumable`` (conf/hydra/sweeper/) is the Optuna sweeper plugin with three changes:

- the objective is the run's return value, a validation score (``best/val/<m>``: the validation value of the
  sub-model chosen on validation, experiments/results/files.py ``objective_key``), so the direction follows
  ``eval.higher_is_better`` (maximize / minimize) instead of a second setting that could disagree;
- the study lives in ``<hydra.sweep.dir>/optuna.db`` (SQLite) under the experiment's ``name``, unless
  ``hydra.sweeper.storage`` / ``study_name`` say otherwise;
- ``n_trials`` is the size of the whole search, not of this invocation: rerunning the same command counts
  the trials the storage already holds (complete or pruned) and runs only the rest;
- a trial that was running when the search was killed (still ``RUNNING`` in the storage) is launched again
  first, with its own parameters and trial number, so it gets its own folder back and continues from its
  last checkpoint (the spine's exact resume); a finished trial's folder is never rerun.

Trial ``n`` runs in ``<sweep>/<n>`` (job number = trial number). Resuming assumes one search process per
study: a ``RUNNING`` trial is taken as abandoned. Hydra loads sweepers only from the ``hydra_plugins``
namespace package, hence this folder.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
STORAGE_FILE = "optuna.db"


def direction_of(config: DictConfig) -> str:
    return "maximize" if OmegaConf.select(config, "eval.higher_is_better", default=True) else "minimize"


class ResumableOptunaSweeper(OptunaSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        HydraConfig.instance().set_config(config)  # the sweep folder's name may use ${hydra:...}
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates a file, not its folder
        impl = self.sweeper
        impl.direction = direction_of(config)
        # Filled here, not in the yaml: the sweeper is built before ${hydra:...} can resolve.
        impl.storage = impl.storage or f"sqlite:///{sweep_dir.resolve() / STORAGE_FILE}"
        impl.study_name = impl.study_name or str(OmegaConf.select(config, "name", default="search"))

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        impl = self.sweeper
        study = optuna.create_study(study_name=impl.study_name, storage=impl.storage,
                                    direction=impl.direction, load_if_exists=True)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._finish_abandoned(study, trial)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if done:
            log.info(f"Resuming study {study.study_name}: {done} of {impl.n_trials} trials done")
        impl.n_trials = max(impl.n_trials - done, 0)
        impl.job_idx = len(study.trials)  # the next trial's number: its folder name
        if impl.n_trials == 0 and not done:
            return
        impl.sweep(arguments)

    def _finish_abandoned(self, study: Any, trial: Any) -> None:
        """Run an interrupted trial again in its own folder (it resumes there) and record its value."""
        from optuna.trial import TrialState

        overrides = tuple(f"{k}={v}" for k, v in {**trial.params, **trial.user_attrs}.items())
        log.info(f"Trial {trial.number} was interrupted: running it again ({' '.join(overrides)})")
        ret = self.sweeper.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        try:
            study.tell(trial.number, float(ret.return_value))
        except Exception as err:  # the job raised, or returned no number
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning(f"Trial {trial.number} failed: {err}")
