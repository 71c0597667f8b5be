"""Optuna search that resumes (hydra/sweeper=optuna_resumable, conf/search/): a search killed during trial k
continues, on the same command, with trial k in its own folder from its checkpoint, then the rest."""
import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import ROOT, run, run_until_killed, write_addition_qa

# a tiny random LM: trials of 12 optimizer steps with a checkpoint every 2, objective the lowest test loss
TRIAL = ["model=tiny_llama", "quantization=none", "trainer.max_steps=12", "checkpoint.every_n_steps=2",
         "data.limit_val=4", "data.limit_test=4", "data.batch_size=2", "eval.max_new_tokens=2", "adapter.r_max=2",
         "adapter.eval_ranks=[1,2]", "threads=1", "eval.metric=test/loss", "eval.higher_is_better=false"]
PAPERS = ["qdylora", "sortednet", "soft", "whisper", "krona", "focl"]


def _study(sweep):
    import optuna

    return optuna.load_study(study_name="qdylora/quick", storage=f"sqlite:///{sweep / 'optuna.db'}")


@pytest.mark.slow
def test_a_search_killed_during_trial_k_resumes_at_trial_k_from_its_storage(env, tmp_path):
    from optuna.trial import TrialState

    data = write_addition_qa(tmp_path / "qa.jsonl", n=40)
    sweep = tmp_path / "search"
    args = ["-m", "search=qdylora", *TRIAL, f"data.source={data}", "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}"]
    ckpt = sweep / "1" / "checkpoints" / "last.ckpt"  # trial 1 midway: trial 0 has finished
    run_until_killed(args, env, ckpt)
    assert ckpt.exists() and not (sweep / "1" / "results.json").exists(), "the search must die in trial 1"
    killed = _study(sweep).trials
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    first = sweep / "0" / "results.json"
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns

    again = run(args, env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert "Trial 1 was interrupted: running it again" in out and f"resuming from {ckpt}" in out
    trials = _study(sweep).trials
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[1].params == killed[1].params  # trial 1 continued with its own parameters
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime  # trial 0 not rerun
    for t in trials:  # each trial's value is its run's objective, in the folder named by its number
        assert t.value == json.loads((sweep / str(t.number) / "results.json").read_text())["best/val/loss"]
    assert _study(sweep).direction.name == "MINIMIZE"  # from eval.higher_is_better=false
    best = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {min(t.value for t in trials)}" in best



@pytest.mark.parametrize("paper", PAPERS)
def test_each_papers_search_composes_with_its_quick_preset_and_names_real_keys(paper):
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import BaseDistribution

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={paper}/quick", f"search={paper}"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lab_sweepers.resumable_optuna.ResumableOptunaSweeper"
    assert OmegaConf.to_container(cfg.hydra.sweep)["dir"] == "multirun/${name}/search_${hydra:runtime.choices.search}"
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert len(space) >= 2 and all(isinstance(d, BaseDistribution) for d in space.values())
    for key in [*space, *fixed]:  # a config group or an option of the composed config (a typo fails late)
        assert (ROOT / "conf" / key).is_dir() or OmegaConf.select(cfg, key) is not None, key


SEARCHES = sorted(p.stem for p in (ROOT / "conf" / "search").glob("*.yaml"))


@pytest.mark.parametrize("paper", SEARCHES)
def test_every_search_optimises_a_validation_metric_named_in_its_header(paper):
    """The objective is the run's return value: the header comment names it, and it is a validation key."""
    import re

    from experiments.results.files import objective_key

    header = (ROOT / "conf" / "search" / f"{paper}.yaml").read_text().split("defaults:")[0]
    header = header.replace("\n#", " ").replace("<data.metric>", "<data_metric>")
    named = re.search(r"objective (\S+?)[\s,.(]", header)
    assert named, f"conf/search/{paper}.yaml: the header comment must name its objective"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={paper}/quick", f"search={paper}"])
    # what the run returns: continual runs return eval.metric itself (no sub-models), the others the validation
    # score of the sub-model chosen on validation (under the first condition for speech)
    returned = cfg.eval.metric if cfg.paradigm == "continual" else objective_key(cfg.eval.metric)
    if cfg.paradigm == "speech":
        returned += f"@condition={cfg.corruption.conditions[0]}"
    name = named.group(1).replace("<data_metric>", str(OmegaConf.select(cfg, "data.metric")))
    assert name == returned, f"conf/search/{paper}.yaml names {name}, the run returns {returned}"
    assert returned.startswith(("val/", "best/val/")), f"{paper}: objective {returned} is not a validation metric"
