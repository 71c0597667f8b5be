"""Launchers: a real sweep through Hydra's submitit launcher (its local executor), one job preempted and
requeued midway; the SLURM presets rendered into the sbatch script submitit would submit."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, write_addition_qa
from tests.test_sweeps import JOB


def _process_writing(log: Path) -> int | None:
    """The pid of the process holding ``log`` open (the submitit task running that Hydra job)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(log) for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:  # a process that ended, or not ours
            continue
    return None


def _results(job_dir: Path) -> dict:
    return {k: v for k, v in json.loads((job_dir / "results.json").read_text()).items()
            if not k.startswith(("memory/", "memory_mb@", "latency_ms@"))}  # measured, not computed


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the job's process through /proc")
def test_submitit_sweep_of_two_jobs_with_one_preempted_and_requeued(env, tmp_path):
    data = write_addition_qa(tmp_path / "qa.jsonl", n=40)
    sweep = tmp_path / "sweep"
    # two jobs of one config: job 1, preempted and resumed, must end exactly where job 0 ends
    args = ["-m", "hydra/launcher=submitit_local", *JOB, f"data.source={data}", "seed=1,1",
            f"hydra.sweep.dir={sweep}"]
    main = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt = sweep / "1" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 150
    while not ckpt.exists() and main.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    task = _process_writing(sweep / "1" / "run.log")
    assert task is not None and not (sweep / "1" / "results.json").exists(), "job 1 must be midway"
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before preempting a job (submitit's signal)
    out, _ = main.communicate(timeout=240)
    assert main.returncode == 0, out[-3000:]

    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    assert f"resuming from {ckpt}" in logs  # the requeued job continued in its own folder
    assert _results(sweep / "1") == _results(sweep / "0")  # ... exactly as the uninterrupted one ran
    table = (sweep / "report.md").read_text().splitlines()
    assert table[0].startswith("| n |") and table[2].startswith("| 2 |")  # both jobs' results pooled


@pytest.mark.parametrize("preset, overrides, expected", [
    ("slurm_gpu", ["trainer=gpu", "trainer.devices=4"],
     ["--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--time=1440", "--cpus-per-task=8"]),
    ("slurm_cpu", [], ["--ntasks-per-node=1", "--time=240", "--cpus-per-task=4"]),
])
def test_slurm_presets_give_the_sbatch_script(preset, overrides, expected, monkeypatch, tmp_path):
    import submitit
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={preset}", "hydra.launcher.partition=gpuq",
                                           "hydra.launcher.max_num_timeout=5",
                                           f"hydra.sweep.dir={tmp_path}", *overrides], return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    made = {}

    def submit(executor, *args):  # the launcher's executor, fully configured, instead of sbatch
        made["executor"] = executor
        raise StopIteration

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # srun is "there"
    with pytest.raises(StopIteration):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    slurm = made["executor"]._executor
    script = slurm._make_submission_file_text("python -m submitit.core._submit X", "uid")
    flags = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    for flag in [*expected, "--partition=gpuq", "--requeue", f"--signal=USR2@{cfg.hydra.launcher.signal_delay_s}"]:
        assert flag in flags, (flag, flags)
    assert slurm.max_num_timeout == 5  # time-outs are requeued that often (preemptions always)
