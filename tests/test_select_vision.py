"""task=select on SortedNet: a sub-network of a tiny finished ViT run under a latency / FLOPs budget, exported."""
import json

import pytest
import torch

from tests.conftest import run
from tests.test_sortednet import GRID, TINY


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("sorted_select")
    proc = run([*TINY, "export.submodels=[]", f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads((run_dir / "results.json").read_text())


def _select(run_dir, **budget):
    from omegaconf import OmegaConf

    from experiments.results.select import select_task

    return select_task(OmegaConf.create({"select": {"run_dir": str(run_dir), "metric": "test/loss",
                                                    "higher_is_better": False, "budget": budget}}))


def test_memory_is_the_sliced_weights_and_flops_twice_the_macs(finished):
    _, results = finished
    for key in GRID:
        assert results[f"memory_mb@{key}"] == pytest.approx(4 * results[f"params@{key}"] / 2**20)
    chosen = _select(finished[0], flops=2 * results["macs@depth=1,width=32"])
    assert chosen["costs"]["flops"] == 2 * results[f"macs@{chosen['submodel']}"]


@pytest.mark.parametrize("kind", ["latency_ms", "memory_mb"])
def test_a_budget_picks_the_best_fitting_subnetwork_and_exports_its_standalone_vit(finished, kind):
    from modules.sorted_vit import SortedViT, SortedViTConfig, build_independent, copy_slices
    from modules.submodel import SubModel

    run_dir, results = finished
    limit = sorted(results[f"{kind}@{k}"] for k in GRID)[1]  # the two cheapest fit
    fits = [k for k in GRID if results[f"{kind}@{k}"] <= limit]
    want = min(fits, key=lambda k: (results[f"val/loss@{k}"], results[f"{kind}@{k}"]))  # chosen on validation
    chosen = _select(run_dir, **{kind: limit})
    assert chosen["submodel"] == want
    folder = run_dir / "selected" / want.replace("=", "_").replace(",", "_")
    small = SortedViT(SortedViTConfig(**json.loads((folder / "config.json").read_text())))
    small.load_state_dict(torch.load(folder / "model.pt"))
    sub = SubModel.parse(want)
    assert (small.config.num_hidden_layers, small.config.hidden_size) == (sub["depth"], sub["width"])
    # the exported weights are the run's trained slice
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    full = SortedViT(SortedViTConfig(**{**json.loads((folder / "config.json").read_text()), "hidden_size": 32,
                                        "num_hidden_layers": 2, "intermediate_size": 64, "num_attention_heads": 2}))
    full.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    expected = copy_slices(full, build_independent(full.config, sub), sub).state_dict()
    assert expected.keys() == small.state_dict().keys()
    assert all(torch.equal(expected[k], v) for k, v in small.state_dict().items())
