"""A run's record is the truth: results.json last, one writer per folder, refused commands change nothing,
divergence and I/O failures in one line, SIGTERM saves and exits 143, nothing a user points at runs code."""
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, run, write_addition_qa
from tests.test_run import TINY


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_addition_qa(tmp_path_factory.mktemp("data") / "qa.jsonl", n=40)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env, data_file):
    """One finished tiny run: (its folder, the command that made it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    args = [*TINY, f"data.source={data_file}", "threads=1"]
    proc = run([*args, f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, args


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


class Payload:
    """A pickle that, when loaded, creates a marker file (the code a checkpoint must never run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --- finished means finished ------------------------------------------------------------------------------
def _cfg(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, "logger=none", *overrides])


def test_a_failing_export_leaves_no_results_json_and_the_rerun_does_not_train_again(data_file, tmp_path, monkeypatch):
    from experiments.core.runtime import RunContext
    from experiments.paradigms.lm import LMParadigm
    from modules.lm_module import NestedCausalLM

    cfg = _cfg([f"data.source={data_file}", "export.submodels=[largest]"])

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LMParadigm, "export_submodel", full_disk)
    with pytest.raises(OSError):
        LMParadigm().run(RunContext(cfg, tmp_path))
    assert not (tmp_path / "results.json").exists()  # not finished: the export is missing
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    monkeypatch.undo()

    steps = []
    original = NestedCausalLM.training_step
    monkeypatch.setattr(NestedCausalLM, "training_step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    assert RunContext(cfg, tmp_path).finished_results() is None
    LMParadigm().run(RunContext(cfg, tmp_path))
    assert steps == []  # training resumed at its end: only the steps after it ran again
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["best/submodel"] and (tmp_path / "exports" / "rank_4").is_dir()


# --- divergence --------------------------------------------------------------------------------------------
def test_a_nan_loss_stops_training_with_the_step_and_the_last_finite_loss():
    from types import SimpleNamespace

    from experiments.core.callbacks import FiniteLoss
    from experiments.core.config import RunError

    check = FiniteLoss(every=1, checkpoint_every=50)
    trainer = SimpleNamespace(global_step=1, max_steps=10, callback_metrics={})
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(2.5)}, None, 0)
    trainer.global_step = 2  # manual optimization (a GAN) returns nothing: the logged train/* values count
    trainer.callback_metrics = {"train/g_loss": torch.tensor(float("nan"))}
    with pytest.raises(RunError, match=r"diverged at step 2: train/g_loss=nan \(last finite loss 2.5 at step 1\)"):
        check.on_train_batch_end(trainer, None, None, None, 1)


def test_non_finite_evaluation_metrics_are_an_error():
    from experiments.core.config import RunError
    from experiments.paradigms.base import check_finite_metrics

    check_finite_metrics({"test/loss@rank=1": 1.0, "best/submodel": "rank=1"})
    with pytest.raises(RunError, match="test/ppl@rank=2=inf"):
        check_finite_metrics({"test/loss@rank=1": 1.0, "test/ppl@rank=2": float("inf")})


def test_a_sweep_with_a_diverging_and_a_bad_job_finishes_the_good_one_and_marks_the_others_failed(env, data_file,
                                                                                                   tmp_path):
    from experiments.results.sweep import load_jobs

    proc = run(["-m", *TINY, f"data.source={data_file}", "threads=1", "optimizer.lr=1e-3,1e30,-1",
                f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}"], env, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: training diverged at step" in proc.stderr and "(last finite loss " in proc.stderr, proc.stderr[-3000:]
    assert "error: optimizer.lr must be > 0" in proc.stderr
    jobs = load_jobs(tmp_path)
    assert [j["dir"].name for j in jobs] == ["0"]
    failed = {j["dir"].name: j for j in jobs.incomplete}
    assert set(failed) == {"1", "2"} and all(j["status"] == "failed" for j in failed.values())
    assert "diverged" in failed["1"]["error"]
    assert not (tmp_path / "1" / "results.json").exists() and not (tmp_path / "1" / "exports").exists()


# --- one writer per folder; a refused command changes nothing -------------------------------------------------
def test_a_held_lock_is_one_line_and_changes_nothing(finished, env):
    from experiments.core.runtime import folder_lock

    run_dir, args = finished
    before = folder_hashes(run_dir)
    (run_dir / "results.json").rename(run_dir / "results.json.bak")  # an unfinished run: it would continue
    try:
        before = folder_hashes(run_dir)
        with folder_lock(run_dir):
            proc = run([*args, f"hydra.run.dir={run_dir}"], env)
    finally:
        (run_dir / "results.json.bak").rename(run_dir / "results.json")
    assert proc.returncode == 2
    assert "is in use by another run" in one_error_line(proc)
    after = folder_hashes(run_dir)
    after["results.json.bak"] = after.pop("results.json")
    assert after == before


def test_a_refused_command_leaves_the_folder_byte_identical(finished, env):
    run_dir, args = finished
    before = folder_hashes(run_dir)
    proc = run([*args, "seed=3", f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 2 and "holds a run of another config" in one_error_line(proc)
    assert folder_hashes(run_dir) == before
    again = run([*args, f"hydra.run.dir={run_dir}"], env)  # the same command: finished, nothing rewritten
    assert again.returncode == 0 and "already finished" in again.stdout
    assert folder_hashes(run_dir) == before


def test_a_moved_folder_resumes(finished, env, tmp_path):
    run_dir, args = finished
    moved = tmp_path / "elsewhere"
    shutil.copytree(run_dir, moved)
    (moved / "results.json").unlink()
    proc = run([*args, f"hydra.run.dir={moved}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {moved / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    assert (moved / "results.json").is_file()


# --- truncated files, a full disk --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["results.json", "checkpoints/last.ckpt"])
def test_a_truncated_record_file_is_one_line_naming_it(finished, env, tmp_path, name):
    run_dir, args = finished
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    if name != "results.json":
        (copy / "results.json").unlink()
    path = copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = folder_hashes(copy)
    proc = run([*args, f"hydra.run.dir={copy}"], env)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert str(path) in line and ("delete it" in line)
    assert folder_hashes(copy) == before


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_removes_the_temporary_file_and_keeps_the_previous_checkpoint(tiny_disk):
    from experiments.core.callbacks import AtomicCheckpointIO
    from experiments.core.config import RunError
    from experiments.results.files import write_json

    path = tiny_disk / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    with pytest.raises(RunError, match=r"cannot write .*last.ckpt: no space left on the device; the previous"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(1_000_000)}}, path)  # 4 MB on a 1 MiB disk
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no .last.ckpt.tmp<pid> left
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(1000))
    write_json(tiny_disk / "results.json", {"a": 1})
    with pytest.raises(OSError) as err:
        write_json(tiny_disk / "results.json", {"a": "x" * 2_000_000})
    assert err.value.errno == 28
    assert json.loads((tiny_disk / "results.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["checkpoints", "results.json"]


# --- signals -----------------------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_exits_143(env, data_file, tmp_path):
    args = [*TINY, f"data.source={data_file}", "threads=1", "trainer.max_steps=400", "checkpoint.every_n_steps=2",
            "data.batch_size=2", f"hydra.run.dir={tmp_path}"]
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    job = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ckpt.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a step or so past the first checkpoint
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 143, err[-3000:]
    assert "error: stopped by SIGTERM" in err and "Traceback" not in err
    saved = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 0 < step < 400 and (not saved or f"step {step}:" in saved[0])
    assert not (tmp_path / "results.json").exists()


# --- nothing runs code -----------------------------------------------------------------------------------------
def test_a_pickle_given_as_eval_checkpoint_is_refused_without_running(env, tmp_path):
    marker = tmp_path / "ran"
    payload = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, payload)
    proc = run([*TINY, "task=eval", f"eval.ckpt_path={payload}", f"hydra.run.dir={tmp_path / 'eval'}"], env)
    assert proc.returncode == 2 and "is not a readable checkpoint" in one_error_line(proc)
    assert not marker.exists()


@pytest.mark.parametrize("node", ["model.extra", "hydra.callbacks.extra"])
def test_a_nested_target_that_loads_a_pickle_is_refused_without_running(env, tmp_path, node):
    marker = tmp_path / "ran"
    payload = tmp_path / "evil.pkl"
    payload.write_bytes(pickle.dumps(Payload(marker)))
    proc = run([*TINY, f"+{node}._target_=torch.load", f"+{node}.f={payload}", f"+{node}.weights_only=false",
                f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert proc.returncode == 2
    assert f"{node}._target_=torch.load is not allowed" in one_error_line(proc)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_targets_are_exact_names_never_loaders():
    from experiments.core.config import ConfigError, check_target, check_targets

    for ok in ("torch.optim.AdamW", "modules.submodel.UniformSampler", "experiments.results.sweep.JobStatusCallback"):
        check_target(ok)
    for bad in ("torch.load", "torch.optim.AdamW.__init__.__globals__", "modules.base_module.torch.load",
                "builtins.open", "pickle.loads", "experiments.core.runtime.os.system", "torch.optim.AdamWx"):
        with pytest.raises(ConfigError):
            check_target(bad)
    with pytest.raises(ConfigError, match=r"a.b.0.c._target_=builtins.eval"):
        check_targets({"a": {"b": [{"c": {"_target_": "builtins.eval"}}]}})


# --- Hydra-level and config errors: one line, exit 2 -------------------------------------------------------------
@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("confdirs")
    (root / "good" / "experiment" / "mine").mkdir(parents=True)
    (root / "good" / "experiment" / "mine" / "quick7.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /experiment/qdylora/quick\n  - _self_\nseed: 7\n")
    (root / "broken" / "experiment").mkdir(parents=True)
    (root / "broken" / "experiment" / "typo.yaml").write_text("# @package _global_\nseed: [1, 2\n")
    return root


@pytest.mark.parametrize("args, says", [
    (["--config-dir", "{root}/broken", "experiment=typo"], "typo.yaml"),
    (["seed=-1"], "seed must be >= 0"),
    (["+trainer.max_stepz=3"], "trainer.max_stepz is not an argument of lightning.pytorch.Trainer"),
    (["optimizer.lr=inf"], "optimizer.lr must be a finite number"),
    (["data.source=/no/such/file.jsonl"], "data.source='/no/such/file.jsonl': no such file"),
    (["generator=cvae"], "Could not override 'generator'"),  # a group of the continual paradigm, not the LM's
])
def test_config_errors_are_one_line_and_exit_2(env, tmp_path, config_dirs, args, says):
    args = [a.format(root=config_dirs) for a in args]
    flags = args[:2] if args[0].startswith("--") else []
    proc = run([*flags, *TINY, *args[len(flags):], f"hydra.run.dir={tmp_path / 'run'}"], env, timeout=120)
    assert proc.returncode == 2
    assert says in one_error_line(proc)
    assert not (tmp_path / "run" / ".hydra").exists()  # nothing written for a refused command


def test_an_experiment_of_a_config_dir_is_accepted(env, config_dirs):
    proc = run(["--config-dir", str(config_dirs / "good"), "--cfg", "job", "experiment=mine/quick7"], env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\nseed: 7\n" in proc.stdout
