"""task=select: the best sub-model of a small finished run under each kind of budget, exported and checked."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from experiments.core.config import ConfigError
from tests.conftest import run, write_addition_qa
from tests.test_run import TINY

COSTS = ("params", "flops", "latency_ms", "memory_mb")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env):
    """A tiny nested-LoRA run (ranks 1, 2, 4 evaluated) through run.py."""
    root = tmp_path_factory.mktemp("select")
    data = write_addition_qa(root / "qa.jsonl", n=60)
    run_dir = root / "run"
    proc = run([*TINY, f"data.source={data}", "threads=1", "export.submodels=[]", f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads((run_dir / "results.json").read_text())


def _select(run_dir, **budget):
    from experiments.results.select import select_task

    cfg = OmegaConf.create({"select": {"run_dir": str(run_dir), "metric": "test/loss", "higher_is_better": False,
                                       "budget": {k: budget.get(k) for k in COSTS}, "export_dir": "selected"}})
    return select_task(cfg)


def test_the_run_logged_every_cost_of_every_submodel(finished):
    _, results = finished
    for b in (1, 2, 4):
        assert all(f"{c}@rank={b}" in results for c in COSTS)
    # a nested LoRA at rank b: the base plus b rows of A and b columns of B in each adapted layer
    per_rank = results["params@rank=2"] - results["params@rank=1"]
    assert results["params@rank=4"] - results["params@rank=2"] == 2 * per_rank
    assert per_rank == 2 * sum(i + o for i, o in ((64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)))
    # FLOPs of one 64-token forward grow by 2 FLOPs per added parameter per token
    assert results["flops@rank=2"] - results["flops@rank=1"] == 2 * 64 * per_rank
    assert results["memory_mb@rank=2"] - results["memory_mb@rank=1"] == pytest.approx(4 * per_rank / 2**20)


@pytest.mark.parametrize("kind", COSTS)
def test_each_budget_picks_the_best_submodel_that_fits_and_exports_its_rank_b_adapter(finished, kind):
    from safetensors.torch import load_file

    run_dir, results = finished
    limit = results[f"{kind}@rank=2"]  # ranks 1 and 2 fit (latency: whichever ranks were that fast)
    fits = [b for b in (1, 2, 4) if results[f"{kind}@rank={b}"] <= limit]
    want = min(fits, key=lambda b: (results[f"val/loss@rank={b}"], results[f"{kind}@rank={b}"]))  # chosen on val
    chosen = _select(run_dir, **{kind: limit})
    assert chosen["submodel"] == f"rank={want}" and chosen["costs"][kind] <= limit
    folder = run_dir / "selected" / f"rank_{want}"
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == want
    exported = load_file(folder / "adapter_model.safetensors")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    a = next(k for k in exported if "lora_A" in k and "layers.0.self_attn.q_proj" in k)
    trained = next(v for k, v in state.items() if k.endswith("layers.0.self_attn.q_proj.lora_A"))
    assert torch.equal(exported[a], trained[:want])  # the rank-b slice of the trained A
    assert json.loads((run_dir / "selected" / "selection.json").read_text())["submodel"] == f"rank={want}"


def test_an_impossible_budget_is_one_line_naming_the_smallest_submodels_cost(finished, env, tmp_path):
    run_dir, results = finished
    with pytest.raises(ConfigError, match=r"select.budget.params=10: no sub-model of .* fits; the smallest, rank=1, "
                                          r"has params=" + f"{results['params@rank=1']:,}"):
        _select(run_dir, params=10)
    proc = run(["task=select", f"select.run_dir={run_dir}", "select.budget.memory_mb=0.001",
                f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: select.budget.memory_mb=0.001: no sub-model")
    assert f"the smallest, rank=1, has memory_mb={results['memory_mb@rank=1']:.4g}" in lines[0]


def test_a_sweep_folder_pools_every_jobs_submodels(tmp_path):
    """Two jobs' grids compete; the winner's job folder gets the selection (no checkpoint here: nothing exported)."""
    import yaml

    for job, acc in (("0", 0.6), ("1", 0.7)):
        folder = tmp_path / job
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={job}"]))
        (folder / "resume_config.yaml").write_text(yaml.safe_dump(
            {"paradigm": "vision", "eval": {"metric": "test/acc", "higher_is_better": True}}))
        (folder / "results.json").write_text(json.dumps(
            {f"{k}@width={w}": v for w in (16, 32) for k, v in
             (("val/acc", acc + w / 100), ("test/acc", 1 - w / 100), ("macs", 100 * w), ("params", 10 * w))}))
    from experiments.results.select import select_task

    chosen = select_task(OmegaConf.create({"select": {"run_dir": str(tmp_path), "budget": {"flops": 2 * 100 * 16}}}))
    assert chosen["submodel"] == "width=16" and chosen["run_dir"] == str(tmp_path / "1")
    assert chosen["metric"] == "val/acc" and chosen["test_score"] == pytest.approx(0.84)  # its test value, reported
    assert chosen["score"] == pytest.approx(0.86) and chosen["costs"] == {"params": 160, "flops": 3200, "latency_ms": None,
                                                                          "memory_mb": None}
    assert json.loads((tmp_path / "1" / "selected" / "selection.json").read_text())["exported"] == []
    with pytest.raises(ConfigError, match=r"select.budget.latency_ms=5: .* logged no latency_ms@<sub-model>; "
                                          r"budgets it can check: flops, params"):
        select_task(OmegaConf.create({"select": {"run_dir": str(tmp_path), "budget": {"latency_ms": 5}}}))
