"""The continual paradigm (FoCL) through run.py: two tasks of scikit-learn digits, a few generator steps.

The accuracy matrix, forgetfulness and pictures of a run; exact resume of a run SIGKILLed in its second task;
a bad task split as one line before anything loads; the config checks of the paradigm."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run

TINY = ["experiment=focl/quick", "data.classes_per_task=5", "continual.steps_per_task=40", "checkpoint.every_n_steps=5",
        "continual.replay_batch=16", "eval.n_per_class=20", "eval.samples_per_class=4", "eval.classifier_epochs=8",
        "logger=none"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("straight")
    proc = run([*TINY, f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def _results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in results.items() if not k.startswith("memory/")}


def test_two_tasks_give_the_accuracy_matrix_forgetfulness_and_pictures(straight):
    run_dir, proc = straight
    results = _results(run_dir)
    for key in ("test/acc@after=t0,task=t0", "test/acc@after=t1,task=t0", "test/acc@after=t1,task=t1",
                "test/avg_acc@after=t1", "test/forgetfulness@after=t1", "test/frechet@after=t1",
                "final/score@measure=avg_acc", "final/score@measure=forgetfulness", "final/score@measure=frechet"):
        assert key in results, key
    assert "test/acc@after=t0,task=t1" not in results  # task 1 is not learned yet after task 0
    assert results["test/classifier_acc"] > 0.9  # the scoring classifier on real test digits
    forgetting = results["test/acc@after=t0,task=t0"] - results["test/acc@after=t1,task=t0"]
    assert results["test/forgetfulness@after=t1"] == pytest.approx(forgetting)  # 1/(T-1) Σ (A[j,j] - A[T-1,j])
    assert results["final/score@measure=avg_acc"] == pytest.approx(
        (results["test/acc@after=t1,task=t0"] + results["test/acc@after=t1,task=t1"]) / 2)
    assert results["tasks/done"] == results["tasks/total"] == 2
    for name in ("samples/after_t0.png", "samples/after_t1.png", "accuracy_curves.png", "generators/after_t0.pt",
                 "results.md", "checkpoints/last.ckpt"):
        assert (run_dir / name).stat().st_size > 0, name
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 80 and ckpt["continual"]["task"] == 1  # generator steps; the task index
    assert not any(k.startswith(("previous.", "phi_classifier.")) for k in ckpt["state_dict"])  # rebuilt, not saved
    assert "accuracy matrix" in proc.stdout


def test_sigkill_in_the_second_task_then_the_same_command_gives_the_uninterrupted_results(straight, env, tmp_path):
    killed = tmp_path / "killed"
    ckpt, first = killed / "checkpoints" / "last.ckpt", killed / "generators" / "after_t0.pt"
    job = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY, f"hydra.run.dir={killed}"], cwd=ROOT,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # wait for a checkpoint written inside task 1 (after task 0's generator file)
    while job.poll() is None and time.time() < deadline and not (
            first.exists() and ckpt.exists() and ckpt.stat().st_mtime_ns > first.stat().st_mtime_ns):
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 40 < step < 80, f"the run must die inside task 1 (step {step})"
    assert json.loads((killed / "continual_state.json").read_text())["done"] == 1  # written after task 0
    assert not (killed / "results.json").exists()  # results.json: only a finished run
    again = run([*TINY, f"hydra.run.dir={killed}"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt} (task t1" in again.stdout and "already finished" not in again.stdout
    assert _results(killed) == _results(straight[0])


def test_a_run_is_finished_only_when_every_task_is_done(tmp_path):
    from omegaconf import OmegaConf

    from experiments.core.runtime import RunContext
    from experiments.paradigms.continual import ContinualParadigm

    ctx = RunContext(OmegaConf.create({"checkpoint": {"resume": True}}), tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"tasks/done": 1, "tasks/total": 2}))
    assert ContinualParadigm().finished_results(ctx) is None  # killed after task 0: it continues
    (tmp_path / "results.json").write_text(json.dumps({"tasks/done": 2, "tasks/total": 2}))
    assert ContinualParadigm().finished_results(ctx) == {"tasks/done": 2, "tasks/total": 2}


def test_a_split_that_repeats_a_class_is_one_line_before_anything_loads(env, tmp_path):
    proc = run([*TINY, "data.split=[[0,1],[1,2],[3,4,5,6,7,8,9]]", f"hydra.run.dir={tmp_path}"], env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 2 and last == "error: data.split repeats class 1 (in tasks 0 and 1)", proc.stderr[-2000:]
    assert not (tmp_path / "run_info.json").exists()


# --- in process: the checks of the paradigm's config ---------------------------------------------------------
def _cfg(overrides, experiment="focl/quick"):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["data.split=[[0,1],[2,3]]"], "data.split misses class(es) [4, 5, 6, 7, 8, 9] of 0..9"),
    (["data.num_classes=8"], "data.num_classes=8 does not match data.source=digits (10 classes)"),
    (["data.classes_per_task=3"], "classes_per_task=3 does not divide num_classes=10"),
    (["generator=cvae", "regularizer.phi=critic"], "regularizer.phi=critic but generator=cvae has no critic"),
    (["regularizer.phi=vgg"], "regularizer.phi='vgg' is not an option; valid choices: critic, classifier, random"),
    (["+regularizer.wieght=1"], "regularizer.wieght is not an option of regularizer"),
    (["continual.steps_per_task=0"], "continual.steps_per_task must be >= 1"),
    (["optimizer.critic.lr=abc"], "optimizer.critic.lr must be a number"),
    (["optimizer=adamw"], "optimizer: generator.kind=wgan_gp needs the named optimizers generator, critic"),
    (["data=continual_fashion_mnist", "data.data_dir=/no/such/dir"], "data.data_dir='/no/such/dir' lacks the Fashion-MNIST file"),
])
def test_bad_continual_options_are_one_line_errors(overrides, message):
    from experiments.core import tasks
    from experiments.core.config import ConfigError

    with pytest.raises(ConfigError) as err:
        tasks.validate(_cfg(overrides), machine=False)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("experiment", ["focl/quick", "focl/mnist", "focl/svhn"])
def test_presets_compose_with_two_named_adam_optimizers(experiment):
    from experiments.core import tasks

    cfg = _cfg([], experiment)
    assert tasks.validate(cfg, machine=False).name == "continual"
    for name in ("generator", "critic"):
        assert list(cfg.optimizer[name].betas) == [0.0, 0.9]
    assert cfg.generator.n_critic == 5 and cfg.generator.gp_weight == 10.0


# --- in process: the module's training ------------------------------------------------------------------------
IN_PROCESS = ["data.classes_per_task=5", "continual.steps_per_task=6", "continual.replay_batch=16", "eval.n_per_class=10",
              "eval.samples_per_class=2", "eval.classifier_epochs=8", "eval.min_classifier_acc=0", "logger=none"]


def _run_in_process(tmp_path, name, overrides):
    from experiments.core.runtime import RunContext
    from experiments.paradigms.continual import ContinualParadigm

    run_dir = tmp_path / name
    run_dir.mkdir()
    ContinualParadigm().run(RunContext(_cfg([*IN_PROCESS, *overrides]), run_dir))
    return run_dir


def test_a_regulariser_at_weight_zero_trains_exactly_like_fine_tuning(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = {name: torch.load(_run_in_process(tmp_path, name, overrides) / "generators" / "after_t1.pt")
               for name, overrides in (("none", ["regularizer=none"]),
                                       ("pixel0", ["regularizer=pixel", "regularizer.weight=0"]),
                                       ("pixel1", ["regularizer=pixel", "regularizer.weight=1"]))}
    assert all(torch.equal(weights["none"][k], weights["pixel0"][k]) for k in weights["none"])
    assert not all(torch.equal(weights["none"][k], weights["pixel1"][k]) for k in weights["none"])


def test_the_conditional_vae_learns_the_tasks_with_one_optimizer(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run_dir = _run_in_process(tmp_path, "cvae", ["generator=cvae", "regularizer=feature", "regularizer.phi=random"])
    results = json.loads((run_dir / "results.json").read_text())
    assert {"test/acc@after=t1,task=t0", "test/forgetfulness@after=t1", "final/score@measure=frechet"} <= set(results)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12 and len(ckpt["optimizer_states"]) == 1
    assert all(k.startswith("G.") for k in ckpt["state_dict"])
