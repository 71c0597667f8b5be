"""The spine every paper shares: exact resume after SIGKILL, stages, evaluation conditions, a paradigm with
its own run loop, the depth x rank grid, group schemas and one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import ROOT, run, write_addition_qa
from tests.test_run import TINY

KILLABLE = [*TINY, "trainer.max_steps=40", "checkpoint.every_n_steps=5", "data.batch_size=2",
            "trainer.val_check_interval=15", "data.limit_val=4"]  # several epochs, validation inside the fit


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_addition_qa(tmp_path_factory.mktemp("data") / "qa.jsonl", n=40)  # 32 train rows: 16 batches


def _results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    # peak RSS is the process's own; latencies are timings
    return {k: v for k, v in results.items() if not k.startswith(("memory/", "latency_ms@"))}


def test_sigkill_midway_then_the_same_command_gives_the_uninterrupted_results(env, data_file, tmp_path):
    args = [*KILLABLE, f"data.source={data_file}"]
    straight = tmp_path / "straight"
    proc = run([*args, f"hydra.run.dir={straight}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "last.ckpt"
    job = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={killed}"], cwd=ROOT,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert ckpt.exists() and not (killed / "results.json").exists(), "the run must die midway"
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < step < 40

    again = run([*args, f"hydra.run.dir={killed}"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt}" in again.stdout
    assert _results(killed) == _results(straight)


def test_a_finished_run_is_not_redone_and_another_config_is_refused(env, data_file, tmp_path):
    args = [*TINY, f"data.source={data_file}", f"hydra.run.dir={tmp_path}"]
    assert run(args, env).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "results.json", tmp_path / "checkpoints" / "last.ckpt")}
    again = run(args, env)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert all(p.read_bytes() == data for p, data in before.items())
    proc = run([*args, "optimizer.lr=0.5"], env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: hydra.run.dir=") and "optimizer.lr" in last, last
    assert all(p.read_bytes() == data for p, data in before.items())


def test_stage_two_starts_from_stage_one_weights_and_says_so(env, data_file, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert run([*TINY, f"data.source={data_file}", f"hydra.run.dir={stage1}"], env).returncode == 0
    # no training steps in stage 2: its evaluation must see exactly stage 1's trained weights
    proc = run([*TINY, f"data.source={data_file}", f"init_from={stage1}", "trainer.max_steps=0",
                f"hydra.run.dir={stage2}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((stage2 / "run_info.json").read_text())
    assert info["init_from"]["run_dir"] == str(stage1.resolve()) and info["init_from"]["tensors"] > 0
    assert info["init_from"]["checkpoint"] == str((stage1 / "checkpoints" / "last.ckpt").resolve())
    one, two = _results(stage1), _results(stage2)
    for b in (1, 2, 4):
        assert two[f"test/loss@rank={b}"] == pytest.approx(one[f"test/loss@rank={b}"], abs=1e-6)
    fresh = run([*TINY, f"data.source={data_file}", "trainer.max_steps=0", f"hydra.run.dir={tmp_path / 'fresh'}"], env)
    assert fresh.returncode == 0
    assert _results(tmp_path / "fresh")["test/loss@rank=4"] != pytest.approx(one["test/loss@rank=4"], abs=1e-4)


def test_depth_by_rank_grid_on_a_tiny_random_lm(env, data_file, tmp_path):
    proc = run([*TINY, f"data.source={data_file}", "depth.exits=[1,2]", "adapter.eval_ranks=[1,4]",
                f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(tmp_path)
    cells = {k.split("@")[1] for k in results if k.startswith("test/loss@")}
    assert cells == {"depth=1,rank=1", "depth=1,rank=4", "depth=2,rank=1", "depth=2,rank=4"}
    assert results["test/loss@depth=1,rank=4"] != pytest.approx(results["test/loss@depth=2,rank=4"], abs=1e-4)
    assert "| depth=1,rank=1 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "exports").is_dir()


def test_depth_setter_runs_the_first_layers_through_the_shared_norm_and_head(tiny_llama):
    from modules.multi_exit import DecoderDepth, MultiExitError

    ids = torch.randint(0, 260, (2, 7))
    with torch.no_grad():
        hidden = tiny_llama(ids, output_hidden_states=True).hidden_states  # embeddings, layer 1, layer 2 (normed)
        depth = DecoderDepth(tiny_llama)
        depth.set_depth(1)
        logits = tiny_llama(ids).logits
        want = tiny_llama.lm_head(tiny_llama.model.norm(hidden[1]))
        torch.testing.assert_close(logits, want)
        depth.set_depth(2)
        torch.testing.assert_close(tiny_llama(ids).logits, tiny_llama.lm_head(hidden[2]))  # full depth again
        assert len(tiny_llama.model.layers) == 2  # the module tree (and checkpoints) keep every layer
    with pytest.raises(MultiExitError, match=r"valid range 1..2"):
        depth.set_depth(3)


@pytest.mark.parametrize("override, key, hint", [
    ("optimizer.lr=abc", "optimizer.lr", "must be a number"),
    ("adapter.dropout=1.5", "adapter.dropout", "< 1"),
    ("+adapter.dropuot=0.1", "adapter.dropuot", "valid options: kind, r_max"),
    ("trainer.max_steps=-5", "trainer.max_steps", ">= -1"),
    ("model.name_or_path=random:nosucharch", "model.name_or_path", "unknown architecture"),
    ("trainer.accelerator=gpu", "trainer.accelerator=gpu", "no CUDA device"),
    ("depth.exits=[1,5]", "depth.exits[1]", "valid exits: 1..2"),
    ("init_from=/no/such/run", "init_from", "no checkpoint there"),
])
def test_bad_options_fail_in_one_line_before_loading(override, key, hint, env, tmp_path):
    keep = tmp_path / "results.json"
    keep.write_text("{}")
    proc = run([*TINY, *override.split(), f"hydra.run.dir={tmp_path}"], env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 2 and last.startswith("error:") and key in last and hint in last, proc.stderr[-2000:]
    assert keep.read_text() == "{}" and not (tmp_path / "run_info.json").exists()


def test_corrupt_checkpoint_for_eval_is_one_line(env, tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"not a checkpoint")
    proc = run([*TINY, "task=eval", f"eval.ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'eval'}"], env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: eval.ckpt_path=") and "not a readable checkpoint" in last


def test_each_log_line_is_printed_once(env, data_file, tmp_path):
    # Lightning's banners are silenced by default (experiments/core/quiet.py); hydra.verbose=true brings them back
    proc = run([*TINY, f"data.source={data_file}", f"hydra.run.dir={tmp_path}", "hydra.verbose=true"], env,
               process=True)  # a fresh interpreter: its banners not yet silenced by an earlier run
    assert proc.returncode == 0
    out = proc.stdout + proc.stderr
    assert out.count("GPU available") == 1 and out.count("`Trainer.fit` stopped") == 1


def test_progress_bar_only_when_a_person_watches(monkeypatch):
    from omegaconf import OmegaConf

    from experiments.core.runtime import progress_bar_wanted

    auto = OmegaConf.create({"trainer": {"enable_progress_bar": None}})
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_bar_wanted(auto)
    monkeypatch.setenv("CI", "true")
    assert not progress_bar_wanted(auto)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.delenv("CI")
    assert not progress_bar_wanted(auto)
    assert progress_bar_wanted(OmegaConf.create({"trainer": {"enable_progress_bar": True}}))


# --- in process: a paradigm of its own, and evaluation conditions ---------------------------------------------
def _cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, "logger=none", *overrides])


def _two_test_sets_module(ood_file):
    from data.instruct import InstructionDataModule

    class Data(InstructionDataModule):
        def test_dataloader(self):
            other = InstructionDataModule(source=str(ood_file), tokenizer=self.tokenizer, eval_batch_size=8,
                                          limit_test=8, seed=self.seed)
            other.setup()
            return [super().test_dataloader(), other.test_dataloader()]

        def eval_conditions(self, split):
            return [{"testset": "sums"}, {"testset": "ood"}] if split == "test" else [{}]

    return Data


def test_two_test_conditions_of_one_metric_stay_apart(data_file, tmp_path):
    from experiments.core.runtime import RunContext
    from experiments.paradigms.lm import LMParadigm
    from experiments.results.tables import build_table

    ood = tmp_path / "ood.jsonl"
    ood.write_text("".join(json.dumps({"instruction": f"{a}*{a}=?", "input": "", "output": str(a * a)}) + "\n"
                           for a in range(20)))
    Data = _two_test_sets_module(ood)

    class TwoSets(LMParadigm):
        def build(self, cfg):
            module, dm = super().build(cfg)
            return module, Data(source=str(data_file), tokenizer=dm.tokenizer, batch_size=4, eval_batch_size=8,
                                limit_val=8, limit_test=8, seed=cfg.seed)

    cfg = _cfg([f"data.source={data_file}"])
    TwoSets().run(RunContext(cfg, tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    for b in (1, 2, 4):
        sums, other = results[f"test/loss@rank={b},testset=sums"], results[f"test/loss@rank={b},testset=ood"]
        assert sums != pytest.approx(other, abs=1e-4)
    assert "test/loss@rank=4" not in results  # nothing logged without its condition
    assert results["best/submodel@testset=ood"] in {"rank=1", "rank=2", "rank=4"}
    table = (tmp_path / "results.md").read_text()
    assert "| rank=4,testset=ood |" in table and "| rank=4,testset=sums |" in table
    header, rows = build_table([{"overrides": {"adapter": "dylora"}, "metrics": results}], "test/loss",
                               ["adapter"], "testset", row_axes=["rank"])
    assert header == ["adapter", "rank", "testset=ood", "testset=sums"]
    assert [r[1] for r in rows] == [1, 2, 4]
    for row in rows:
        assert row[2][0] == results[f"test/loss@rank={row[1]},testset=ood"]
        assert row[3][0] == results[f"test/loss@rank={row[1]},testset=sums"]


def test_a_paradigm_with_its_own_loop_trains_two_tasks_in_sequence(tmp_path):
    """A continual-style paradigm: task 0 then task 1 on the same module, results written after each task."""
    from experiments.core.runtime import RunContext
    from experiments.paradigms.lm import LMParadigm
    from experiments.results.files import write_results
    from modules.submodel import split_metric_key, metric_key

    files = [write_addition_qa(tmp_path / f"task{t}.jsonl", n=40, seed=t) for t in (0, 1)]

    class TwoTasks(LMParadigm):
        def run(self, ctx):
            module, _ = self.prepare(ctx)
            metrics, steps = {}, int(ctx.cfg.trainer.max_steps)
            for task, source in enumerate(files):
                ctx.cfg.data.source = str(source)
                datamodule = self.build(ctx.cfg)[1]
                trainer = ctx.trainer(max_steps=steps * (task + 1))  # the same module trains on
                trainer.fit(module, datamodule=datamodule)
                for key, value in self.evaluate(ctx, module, datamodule, trainer).items():
                    name, cell = split_metric_key(key)
                    if name.startswith(("val/", "test/")):
                        metrics[metric_key(name, cell, {"task": f"t{task}"})] = value
                write_results(ctx.run_dir, metrics, self.PLOT_METRICS)  # results after every task
                snapshot = json.loads((ctx.run_dir / "results.json").read_text())
                assert any(k.endswith(f"task=t{task}") for k in snapshot)
            return None

    cfg = _cfg([f"data.source={files[0]}", "trainer.max_steps=3"])
    TwoTasks().run(RunContext(cfg, tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    for task in ("t0", "t1"):
        assert f"test/loss@rank=4,task={task}" in results
    assert results["test/loss@rank=4,task=t0"] != results["test/loss@rank=4,task=t1"]
