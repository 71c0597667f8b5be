"""SoFT's presets: the full-scale ones carry the paper's recipe and validate without loading anything; SoFT x
QDyLoRA (NF4 base, dynamic-rank adapter) evaluates the exit x rank grid from one run."""
import json

import pytest
from hydra import compose, initialize_config_dir

from experiments.core import tasks
from tests.conftest import ROOT, run, write_addition_qa


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("preset, data", [("llama2_13b_alpaca", "alpaca"), ("llama2_13b_triviaqa", "triviaqa"),
                                          ("llama2_13b_alpaca_sft", "alpaca"), ("llama2_13b_triviaqa_sft", "triviaqa")])
def test_full_scale_presets_have_the_papers_recipe_and_validate(preset, data):
    from data.instruct_sources import SOURCES

    cfg = compose_cfg([f"experiment=soft/{preset}"])
    tasks.validate(cfg, machine=False)  # schemas + the paradigm's checks; no model, data or judge is loaded
    assert cfg.model.name_or_path == "meta-llama/Llama-2-13b-hf" and cfg.adapter.kind == "none"
    assert cfg.data.source == data and SOURCES[data].dataset_id in ("tatsu-lab/alpaca", "mandarjoshi/trivia_qa")
    if data == "triviaqa":
        assert SOURCES[data].config == "rc.nocontext"
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.max_epochs) == (32, 8, 2)
    assert (cfg.scheduler.name, cfg.optimizer.lr, cfg.seed) == ("cosine", 2e-5, 42)
    assert cfg.trainer.strategy == "fsdp" and cfg.trainer.devices == -1 and cfg.trainer.accelerator == "gpu"
    assert cfg.judge.model == "WeOpenML/PandaLM-7B-v1" and cfg.judge.prompt == "pandalm"
    every_4th = list(range(12, 41, 4))
    if preset.endswith("_sft"):
        assert list(cfg.depth.exits) == [40] and list(cfg.depth.eval_exits) == every_4th
    else:
        assert list(cfg.depth.exits) == every_4th and cfg.sampling._target_.endswith("AllSampler")


def test_sorted_fine_tuning_with_nf4_dynamic_rank_adapters_evaluates_the_exit_by_rank_grid(env, tmp_path):
    data = write_addition_qa(tmp_path / "qa.jsonl", n=40)
    proc = run(["experiment=soft/qdylora_quick", "model=tiny_llama", "trainer.max_steps=3", "data.limit_val=4",
                "data.limit_test=4", "data.batch_size=4", "eval.max_new_tokens=2", "depth.exits=[1,2]",
                "adapter.r_max=4", "adapter.eval_ranks=[1,4]", f"data.source={data}", "threads=1",
                f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    cells = {k.split("@")[1] for k in results if k.startswith("test/em@")}
    assert cells == {"depth=1,rank=1", "depth=1,rank=4", "depth=2,rank=1", "depth=2,rank=4"}
    assert len({round(results[f"test/loss@{c}"], 6) for c in cells}) == 4  # four different sub-models
    generated = {json.loads(line)["submodel"] for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()}
    assert generated == cells
    cfg = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "bnb_4bit_quant_type: nf4" in cfg and "kind: nested_lora" in cfg
