"""Sweep folders -> tables: values, pooling over seeds, paper-table specs, bad specs."""
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from experiments.core.config import ConfigError
from experiments.results.report import aggregate, load_jobs
from experiments.results.tables import build_table, render


def _job(root, num, overrides, metrics):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "results.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path):
    # QDyLoRA: one run per seed fills every rank; QLoRA: one run per rank and seed.
    _job(tmp_path, 0, ["adapter=dylora", "seed=1"], {"test/em@rank=1": 0.2, "test/em@rank=2": 0.4})
    _job(tmp_path, 1, ["adapter=dylora", "seed=2"], {"test/em@rank=1": 0.4, "test/em@rank=2": 0.6})
    _job(tmp_path, 2, ["adapter=lora", "adapter.r_max=1", "seed=1"], {"test/em@rank=1": 0.3})
    _job(tmp_path, 3, ["adapter=lora", "adapter.r_max=2", "seed=1"], {"test/em@rank=2": 0.5})
    return tmp_path


def test_paper_table_pools_seeds_and_fills_cells_from_fixed_rank_runs(sweep):
    header, rows = build_table(load_jobs(sweep), "test/em", ["adapter"], "rank", [1, 2],
                               reference={"QDyLoRA": {1: 0.25}})
    assert header == ["adapter", "rank=1", "rank=2"]
    dylora, lora, paper = rows
    assert dylora[0] == "dylora" and dylora[1] == pytest.approx((0.3, 0.1414213, 2), abs=1e-6)  # (mean, std, n)
    assert lora[1][0] == 0.3 and lora[2][0] == 0.5 and math.isnan(lora[1][1])  # one run: no spread
    assert paper == ["QDyLoRA (paper)", 0.25, None]
    md = render(header, rows)
    assert "| dylora | 0.300 ± 0.141 (n=2) | 0.500 ± 0.141 (n=2) |" in md
    assert "| lora | 0.300 | 0.500 |" in md
    assert r"$\pm$" in render(header, rows, "latex")


def test_a_metric_no_run_logged_is_a_clear_error(sweep):
    with pytest.raises(ConfigError, match="'test/acc' with axis 'rank' was not logged by any run; logged metrics: test/em"):
        build_table(load_jobs(sweep), "test/acc", ["adapter"], "rank")


def test_sweep_report_groups_by_what_varies(sweep):
    header, rows = aggregate(load_jobs(sweep), ["test/em@rank=1"])
    assert header == ["adapter", "adapter.r_max", "n", "test/em@rank=1"]
    by_setting = {tuple(r[:2]): r for r in rows}
    assert by_setting[("dylora", "")][2] == 2 and by_setting[("dylora", "")][3][0] == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="was not logged by any run"):
        aggregate(load_jobs(sweep), ["val/nope"])


@pytest.mark.parametrize("spec", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "table").glob("qdylora*.yaml")))
def test_every_qdylora_table_spec_composes_and_names_a_metric_the_lm_paradigm_logs(spec):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", [f"table={spec}", "task=report"])
    t = cfg.table
    assert t.name == spec and t.rows and t.axis == "rank" and str(t.title)
    assert re.fullmatch(r"(val|test)/(em|loss|ppl|mc_acc)", t.metric), t.metric


def test_focl_table_spec_renders_one_row_per_regularizer(tmp_path):
    """The continual paradigm's summary keys (final/score@measure=...) fill the FoCL table's columns."""
    from hydra import compose, initialize_config_dir

    from experiments.results.tables import build_table

    with initialize_config_dir(str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        t = compose("config", ["table=focl_table", "task=report"]).table
    jobs = [{"overrides": {"regularizer": reg, "seed": str(seed)},
             "metrics": {"final/score@measure=avg_acc": acc + seed / 100, "final/score@measure=forgetfulness": 1 - acc,
                         "final/score@measure=frechet": 100 * (1 - acc)}}
            for reg, acc in (("none", 0.3), ("pixel", 0.9)) for seed in (0, 2)]
    header, rows = build_table(jobs, t.metric, list(t.rows), t.axis, list(t["values"]))
    assert header == ["regularizer", "measure=avg_acc", "measure=forgetfulness", "measure=frechet"]
    assert [r[0] for r in rows] == ["none", "pixel"]
    assert rows[1][1][0] == pytest.approx(0.91) and rows[1][2][0] == pytest.approx(0.1)  # mean over the seeds
