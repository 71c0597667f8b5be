"""run.py as a user runs it (its cli, in this process; a subprocess where a fresh interpreter matters): tiny random model, offline."""
import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run, write_addition_qa

TINY = ["model=tiny_llama", "quantization=none", "trainer.max_steps=4", "data.limit_val=8",
        "data.limit_test=8", "data.batch_size=4", "eval.max_new_tokens=3", "adapter.r_max=4",
        "adapter.eval_ranks=[1,2,4]"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_addition_qa(tmp_path_factory.mktemp("data") / "qa.jsonl", n=100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env, data_file):
    run_dir = tmp_path_factory.mktemp("run")
    proc = run([*TINY, f"data.source={data_file}", f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_train_writes_a_self_describing_run_folder(trained):
    run_dir, proc = trained
    results = json.loads((run_dir / "results.json").read_text())
    for b in (1, 2, 4):
        for name in ("val/loss", "test/loss", "test/ppl", "test/em"):
            assert f"{name}@rank={b}" in results
    # chosen on validation exact match (first of equal scores in grid order), reported with ITS test score
    val = {f"rank={b}": results[f"val/em@rank={b}"] for b in (1, 2, 4)}
    chosen = max(val, key=val.get)
    assert results["best/submodel"] == chosen and results["best/val/em"] == val[chosen]
    assert results["best/test/em"] == results[f"test/em@{chosen}"]
    assert (f"best (on val/em): {chosen} val/em={val[chosen]:.4f} test/em={results[f'test/em@{chosen}']:.4f}"
            in proc.stdout)
    assert "auc/test/em" in results
    # peak memory: the process RSS on a CPU (a torch process is >100 MiB; RSS peaks never go down)
    assert results["memory/kind"] == "cpu_peak_rss" and results["memory/train_peak_mib"] > 100
    assert results["memory/eval_peak_mib"] >= results["memory/train_peak_mib"]
    assert "peak memory (cpu_peak_rss)" in proc.stdout and "| full |" not in proc.stdout  # not a sub-model row
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 42 and "commit" in info["git"] and info["packages"]["torch"]
    assert "model=tiny_llama" in info["overrides"]
    for f in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.ckpt", "results.md",
              "results.csv", "results.png", "csv/metrics.csv", "exports/rank_4/adapter_config.json"):
        assert (run_dir / f).exists(), f
    assert "| rank=4 |" in proc.stdout  # the per-rank table is printed


def test_eval_task_reproduces_the_test_metrics_from_the_checkpoint(trained, env, data_file, tmp_path):
    run_dir, _ = trained
    proc = run([*TINY, f"data.source={data_file}", "task=eval",
                f"eval.ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((run_dir / "results.json").read_text())
    after = json.loads((tmp_path / "results.json").read_text())
    for b in (1, 2, 4):
        assert after[f"test/loss@rank={b}"] == pytest.approx(before[f"test/loss@rank={b}"], abs=1e-5)
        assert after[f"test/em@rank={b}"] == before[f"test/em@rank={b}"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_two_ranks_two_seeds_gives_the_aggregated_table(launcher, env, data_file, tmp_path):
    args = ["-m", *[a for a in TINY if not a.startswith(("adapter.r_max", "adapter.eval_ranks"))],
            f"data.source={data_file}", "adapter.r_max=2,4", "adapter.eval_ranks=[1,2]", "seed=1,2",
            f"hydra.sweep.dir={tmp_path}", "trainer.max_steps=2"]
    if launcher == "joblib":
        args.append("hydra/launcher=joblib_cpu")  # the preset: 2 parallel processes
    proc = run(args, env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("*/results.json"))) == 4
    table = (tmp_path / "report.md").read_text().splitlines()
    assert table[0].startswith("| adapter.r_max | n |") and len(table) == 4  # header, rule, 2 rows
    assert all(" 2 |" in row for row in table[2:])  # two seeds pooled per row
    assert "±" in table[2]
    csv = (tmp_path / "report.csv").read_text().splitlines()
    assert "test/em@rank=1 mean" in csv[0] and len(csv) == 3
    # the report task rebuilds the same table on demand
    again = run(["task=report", f"report.sweep_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'report_run'}"], env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "report.md").read_text().splitlines() == table


@pytest.mark.parametrize("override, key, hint", [
    ("adapter=dora", "adapter", "dylora, krona, krona_block, krona_block_res, lora, lora_svd, lora_truncated, matryoshka_lora, none, peft_lora"),
    ("adapter.r_max=0", "adapter.r_max", ">= 1"),
    ("adapter.eval_ranks=[1,16]", "adapter.eval_ranks[1]", "between 1 and 4"),
    ("model.name_or_path=/no/such/model", "model.name_or_path", "offline alias"),
    ("adapter.r_max=abc", "adapter.r_max", "must be an integer"),
    ("task=fly", "task", "train, eval, report"),
    ("quantization=nf4 export.merge=true", "export.merge", "while ranks are dynamic"),
    ("adapter=peft_lora adapter.eval_ranks=[1,4]", "adapter.eval_ranks", "PEFT's LoRA has one rank"),
])
def test_bad_input_is_one_clear_line_and_loses_nothing(override, key, hint, trained, env, data_file):
    run_dir, _ = trained
    before = {p: p.read_bytes() for p in [run_dir / "results.json", run_dir / "checkpoints" / "last.ckpt"]}
    proc = run([*TINY, f"data.source={data_file}", *override.split(), f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and key in last and hint in last, last
    assert all(p.read_bytes() == data for p, data in before.items())


def test_gpu_run_that_cannot_fit_stops_before_loading_anything(env, tmp_path):
    """Falcon-40b at batch 64 x 512 on the 32 GB card the preset targets (estimate.gpu_gib): check_fits
    fails the train task offline, on a CPU-only machine, before the model is loaded or downloaded."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text("{}")  # an earlier run's file must survive
    cache = tmp_path / "cache"  # XDG_CACHE_HOME (and the HF hub cache under it): stays empty
    proc = run(["experiment=qdylora/falcon_40b", "data.batch_size=64", f"hydra.run.dir={run_dir}"],
               {**env, "XDG_CACHE_HOME": str(cache)}, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: tiiuae/falcon-40b with batch 64 x seq 512"), last
    assert "GiB > budget estimate.gpu_gib=31.7" in last, last
    assert (run_dir / "results.json").read_text() == "{}" and not (run_dir / "run_info.json").exists()
    assert not (cache / "efficient-transformers-lab").exists() and not (cache / "huggingface").exists()  # no model


def test_help_is_fast(env):
    import time

    start = time.perf_counter()
    proc = run(["--help"], env)
    assert proc.returncode == 0 and "full scale: falcon_40b falcon_40b_gsm8k llama2_13b" in proc.stdout
    assert time.perf_counter() - start < 10  # generous for a loaded CI machine; goal is < 3 s


@pytest.mark.parametrize("adapter, extra, axis, values", [
    ("lora_svd", [], "rank", [1, 2, 3, 4]),          # SVD: every rank from one fixed-rank run
    ("peft_lora", [], "rank", [4]),
    ("krona", ["adapter.r_max=2", "adapter.r_min=1"], "kron_rank", [1, 2]),  # one file + one yaml + this row
])
def test_adapters_are_configs_of_the_same_module(adapter, extra, axis, values, env, data_file, tmp_path):
    drop = ("adapter.eval_ranks", "adapter.r_max") if adapter == "krona" else ("adapter.eval_ranks",)
    proc = run([*[a for a in TINY if not a.startswith(drop)],
                f"adapter={adapter}", *extra, f"data.source={data_file}", f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    cells = [k.split("@")[1] for k in results if k.startswith("test/loss@")]
    assert all(c.startswith(f"{axis}=") for c in cells) and sorted(int(c.split("=")[1]) for c in cells) == values


def test_wandb_logger_goes_offline_without_an_api_key(env, data_file, tmp_path):
    home = tmp_path / "home"
    home.mkdir()  # no ~/.netrc here, and no WANDB_API_KEY: the run must log offline, not fail
    offline_env = {k: v for k, v in env.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    offline_env.update(HOME=str(home), WANDB_SILENT="true")
    proc = run([*TINY, f"data.source={data_file}", "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"], offline_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (tmp_path / "run" / "csv" / "metrics.csv").exists()  # CSV always, W&B additionally


def test_a_run_prints_no_library_notices_unless_hydra_verbose(env, data_file, tmp_path):
    args = [*TINY, "quantization=nf4", f"data.source={data_file}"]
    # a fresh interpreter each: the libraries' warnings not yet shown (or silenced) by an earlier run
    quiet = run([*args, f"hydra.run.dir={tmp_path / 'quiet'}"], env, process=True)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr[-2000:]  # no banner, tip, warning or bar
    loud = run([*args, f"hydra.run.dir={tmp_path / 'loud'}", "hydra.verbose=true"], env, process=True)
    assert loud.returncode == 0 and "GPU available" in loud.stdout + loud.stderr  # Lightning's banner is back
