"""task=select on a SoFT-style run (full fine-tuning, depth exits): the chosen exit exported as a plain HF model."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import run, write_addition_qa
from tests.test_run import TINY


@pytest.fixture(scope="module")
def finished(tmp_path_factory, env):
    root = tmp_path_factory.mktemp("select_exit")
    data = write_addition_qa(root / "qa.jsonl", n=60)
    run_dir = root / "run"
    args = [a for a in TINY if not a.startswith("adapter.")]
    proc = run([*args, "adapter=none", "depth.exits=[1,2]", "sampling=all", "export.submodels=[]", "threads=1",
                f"data.source={data}", f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads((run_dir / "results.json").read_text())


def test_the_exit_under_a_params_budget_is_exported_as_a_standalone_model_with_the_exits_logits(finished):
    from transformers import AutoModelForCausalLM

    from experiments import paradigms
    from experiments.results.select import _config_of, select_task
    from modules.submodel import SubModel

    run_dir, results = finished
    assert results["params@depth=1"] < results["params@depth=2"] and results["flops@depth=1"] < results["flops@depth=2"]
    chosen = select_task(OmegaConf.create({"select": {"run_dir": str(run_dir),
                                                      "budget": {"params": results["params@depth=1"]}}}))
    assert chosen["submodel"] == "depth=1"
    exported = AutoModelForCausalLM.from_pretrained(run_dir / "selected" / "depth_1").eval()
    assert exported.config.num_hidden_layers == 1 and len(exported.model.layers) == 1
    assert sum(p.numel() for p in exported.parameters()) == results["params@depth=1"]
    cfg = _config_of(run_dir)
    module = paradigms.get_paradigm("lm").trained_module(cfg, run_dir)
    module.nested.apply(SubModel.of(depth=1))
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits, atol=1e-5)


def test_through_run_py_the_choice_is_explained_per_submodel(finished, env, tmp_path):
    run_dir, results = finished
    proc = run(["task=select", f"select.run_dir={run_dir}", f"select.budget.flops={results['flops@depth=1']}",
                "select.export_dir=picked", f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "| sub-model | params | flops | latency_ms | memory_mb | val/em (chosen on) | test/em | fits |" in out
    assert "| → depth=1 |" in out and out.count("| yes |") == 1 and out.count("| no |") == 1  # exit 2 is over it
    chosen = json.loads((run_dir / "picked" / "selection.json").read_text())
    assert chosen["metric"] == "val/em" and chosen["test_metric"] == "test/em" and chosen["submodel"] == "depth=1"
    assert chosen["test_score"] == results["test/em@depth=1"]
    assert (run_dir / "picked" / "depth_1" / "config.json").exists()
