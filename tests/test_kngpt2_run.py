"""KnGPT2 through run.py and the paradigm: bad input in one line before training, stage 2 from stage 1's weights,
the GLUE stage (the package-shipped SmolLM2 path: tests/test_kngpt2_smollm2.py)."""
import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.core import tasks
from experiments.core.config import ConfigError
from tests.conftest import ROOT, run

TINY = ["experiment=kngpt2/quick", "model=tiny_gpt2", "data.block_size=16", "data.eval_context=16",
        "data.eval_stride=8", "data.batch_size=2", "data.limit_train=8", "data.limit_val=2", "data.limit_test=3",
        "threads=1", "logger=csv"]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("override,message", [
    ("compression.layers=[1,9]", "compression.layers: block 9 does not exist; this model has 4 blocks, valid indices 0..3"),
    ("compression.a_shape=[5,1]", "compression.a_shape=[5, 1] does not fit transformer.h.1.attn.c_attn (d_out=64, d_in=64)"),
    ("compression.layers=banana", "compression.layers='banana' is not an option"),
    ("compression.targets=[q_proj]", "has no linear map 'q_proj'"),
    ("compression=truncate compression.num_layers=9", "compression.num_layers=9 is more than the model's 4 blocks"),
    ("distill.teacher=random:llama distill.teacher_random_config={vocab_size:300,hidden_size:32,intermediate_size:64,"
     "num_hidden_layers:2,num_attention_heads:4,num_key_value_heads:2}",
     "distill.teacher='random:llama' has a vocabulary of 300 tokens but the student"),
    ("adapter=lora", "a compressed student trains all its weights"),
])
def test_bad_input_is_one_config_error_before_anything_loads(override, message):
    cfg = compose_cfg(TINY + override.split(" "))
    with pytest.raises(ConfigError) as err:
        tasks.validate(cfg, machine=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_layer_through_run_py_is_one_error_line(tmp_path, env):
    out = run(TINY + ["compression.layers=[7]", f"hydra.run.dir={tmp_path / 'r'}"], env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("error: compression.layers: block 7 does not exist; this model has "
                                                  "4 blocks, valid indices 0..3")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_presets_compose_and_validate():
    for name in ("quick", "gpt2_openwebtext", "gpt2_wikitext103", "gpt2_glue"):
        cfg = compose_cfg([f"experiment=kngpt2/{name}"])
        assert tasks.validate(cfg, machine=False).name == cfg.paradigm
    cfg = compose_cfg(["experiment=kngpt2/gpt2_openwebtext"])
    assert cfg.model.name_or_path == "gpt2" and cfg.data.hf_id == "Skylion007/openwebtext"
    assert compose_cfg(["experiment=kngpt2/gpt2_wikitext103"]).data.hf_config == "wikitext-103-raw-v1"
    assert compose_cfg(["experiment=kngpt2/gpt2_glue"]).data.hf_id == "nyu-mll/glue"


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, env):
    """Stage 1 through run.py: a Kronecker student of the tiny GPT-2 trained 3 steps with ILKD."""
    folder = tmp_path_factory.mktemp("kngpt2") / "stage1"
    out = run(TINY + ["trainer.max_steps=3", "trainer.log_every_n_steps=1", f"hydra.run.dir={folder}"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    return folder


def test_stage_two_starts_from_stage_one_weights(stage1, tmp_path):
    """Stage 2 (init_from) holds exactly stage 1's trained weights before it trains (checked by value through
    the paradigm's own prepare step) and records its source."""
    from experiments.core.runtime import RunContext
    from experiments.paradigms.distill import DistillLMParadigm

    results = json.loads((stage1 / "results.json").read_text())
    assert results["compression/ratio"] > 1 and results["params/total"] < results["dense_params/total"]
    metrics = (stage1 / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"train/{t}" in metrics for t in ("task", "logits", "hidden", "attention", "embedding"))
    trained = torch.load(stage1 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith(".A") for k in trained) and not any(k.startswith("teacher.") for k in trained)

    cfg = compose_cfg(TINY + [f"init_from={stage1}", "trainer.max_steps=2"])
    paradigm = tasks.validate(cfg, machine=False)
    assert isinstance(paradigm, DistillLMParadigm)
    module, _ = paradigm.prepare(RunContext(cfg, tmp_path, []))
    own = module.state_dict()
    for key, value in trained.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["init_from"]["tensors"] == len(trained) and info["init_from"]["run_dir"] == str(stage1.resolve())


@pytest.mark.slow
def test_glue_stage_from_the_lm_stage(stage1, tmp_path, env):
    """The GLUE stage 2 on the offline topic task (GLUE paradigm): the backbone starts from the LM stage 1."""
    glue = tmp_path / "glue"
    out = run(["experiment=kngpt2/gpt2_glue", "model=tiny_gpt2", "data=offline_topics", "data.limit_train=32",
               "data.limit_test=16", "data.limit_val=8", "trainer=cpu", "trainer.max_steps=2", "latency.repeats=1",
               "data.max_length=24", f"init_from={stage1}", "threads=1", f"hydra.run.dir={glue}"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((glue / "results.json").read_text())
    assert "test/acc" in results and results["compression/ratio"] > 1
    stage = json.loads((glue / "run_info.json").read_text())["init_from"]
    lm_state = torch.load(stage1 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert stage["tensors"] == len(lm_state)  # every stage-1 tensor (the tied head has none of its own)


def test_teacher_takes_the_trained_weights_of_an_earlier_run(tmp_path):
    """``distill.teacher_init_from``: the teacher (here the dense tiny GPT-2) loads a run's ``model.*`` tensors."""
    from experiments.paradigms.distill import load_teacher
    from tests.test_kngpt2 import tiny_gpt2

    trained = tiny_gpt2()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    cfg = compose_cfg(TINY + [f"distill.teacher_init_from={ckpt}"])
    teacher = load_teacher(cfg, tiny_gpt2(), loader=None, student_vocab=260)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[key], value, rtol=0, atol=0)
    torch.save({"state_dict": {"model.other.weight": torch.zeros(1)}}, ckpt)
    with pytest.raises(ConfigError, match="holds no weight of the teacher"):
        load_teacher(cfg, tiny_gpt2(), loader=None, student_vocab=260)
