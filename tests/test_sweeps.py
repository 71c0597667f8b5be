"""Resumable sweeps: a sweep killed midway has a table that marks its failed, unfinished and missing jobs;
rerun with the same command it skips the finished job (its files untouched), reruns the failed one,
continues the unfinished one from its checkpoint and runs the missing one: a complete table."""
import json

import pytest

from experiments.results.sweep import aggregate, load_jobs
from tests.conftest import run, run_until_killed, write_addition_qa

JOB = ["model=tiny_llama", "quantization=none", "trainer.max_steps=12", "checkpoint.every_n_steps=2",
       "data.limit_val=4", "data.limit_test=4", "data.batch_size=2", "eval.max_new_tokens=2", "adapter.r_max=2",
       "adapter.eval_ranks=[1,2]", "threads=1"]
METRIC = "test/loss@rank=2"


def _files(job_dir):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (job_dir / "results.json",
                                                                    job_dir / "checkpoints" / "last.ckpt")}


@pytest.mark.slow
def test_a_killed_sweep_rerun_gives_the_complete_table_without_redoing_finished_jobs(env, tmp_path):
    good = write_addition_qa(tmp_path / "good.jsonl", n=40)
    late = tmp_path / "late.jsonl"  # missing during the first invocation: its jobs fail there
    sweep = tmp_path / "sweep"
    # jobs: 0 = (seed 1, good), 1 = (seed 1, late), 2 = (seed 2, good), 3 = (seed 2, late)
    args = ["-m", *JOB, "seed=1,2", f"data.source={good},{late}", f"hydra.sweep.dir={sweep}"]
    ckpt = sweep / "2" / "checkpoints" / "last.ckpt"  # jobs 0 and 1 are over, job 2 is midway
    run_until_killed(args, env, ckpt)
    assert ckpt.exists() and not (sweep / "2" / "results.json").exists(), "the sweep must die in job 2"

    jobs = load_jobs(sweep)  # the killed sweep's table: nothing dropped silently
    assert [j["dir"].name for j in jobs] == ["0"]
    assert [(j["overrides"]["seed"], j["status"]) for j in jobs.incomplete] == [
        ("1", "failed"), ("2", "unfinished"), ("2", "missing")]
    assert jobs.incomplete[0]["error"] == (f"ConfigError: data.source={str(late)!r}: no such file or folder; "
                                           "give the path of a data file")  # refused before anything loads
    header, rows = aggregate(jobs, [METRIC], group_by=["data.source", "seed"])
    assert header == ["data.source", "seed", "n", METRIC, "not finished"]
    assert [r[2:3] + r[4:] for r in rows] == [[1, ""], [0, "1 unfinished"], [0, "1 failed"], [0, "1 missing"]]
    assert rows[1][3] is None  # no number for a job that did not finish
    finished = _files(sweep / "0")

    write_addition_qa(late, n=40, seed=1)  # what made jobs 1 and 3 fail is fixed
    again = run(args, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"already finished: {sweep / '0' / 'results.json'}" in again.stdout
    assert f"resuming from {ckpt}" in again.stdout
    assert _files(sweep / "0") == finished  # the finished job's results and checkpoint untouched
    assert json.loads((sweep / "1" / "job_status.json").read_text())["status"] == "completed"
    table = (sweep / "report.md").read_text().splitlines()  # the end-of-multirun table, complete
    assert table[0].startswith("| data.source | n |") and "not finished" not in table[0]
    assert len(table) == 4 and all("| 2 |" in row for row in table[2:])  # both seeds in both rows
    assert not load_jobs(sweep).incomplete and len(load_jobs(sweep)) == 4
