"""SoFT's bad input: one `error:` line (exit 2 through run.py) before training starts, nothing written."""

import pytest
from hydra import compose, initialize_config_dir

from experiments.core import tasks
from tests.conftest import ROOT, run, write_addition_qa

TINY = ["model=tiny_llama", "quantization=none", "adapter=none", "sampling=all", "trainer.max_steps=2",
        "data.limit_val=4", "data.limit_test=4", "data.batch_size=4", "eval.max_new_tokens=2", "threads=1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("soft_cli")
    from transformers import LlamaForCausalLM

    from conftest import tiny_llama_config
    from modules.hf_model import byte_tokenizer

    LlamaForCausalLM(tiny_llama_config()).save_pretrained(root / "tiny")  # a real local model folder, 2 layers
    byte_tokenizer().save_pretrained(root / "tiny")
    (root / "other").mkdir()
    (root / "other" / "generations.jsonl").write_text("")  # another run's generations (judge.against)
    write_addition_qa(root / "qa.jsonl", n=40)
    return root


OPT = "+model.random_config={vocab_size:260,hidden_size:32,num_hidden_layers:2,ffn_dim:64,num_attention_heads:2,word_embed_proj_dim:32}"
BAD = [  # what only shows once the model (or the judge's config) is looked at: through run.py
    ("local_exit", ["model.name_or_path={root}/tiny", "~model.random_config", "depth.exits=[1,5]"],
     "depth.exits[1]=5 is beyond the model's 2 layers; valid exits: 1..2"),  # its config.json, read before loading
    ("layout", ["model.name_or_path=random:opt", "~model.random_config", OPT, "depth.exits=[1,2]"],
     "depth.exits: OPTForCausalLM does not have the decoder layout multi-exit needs"),
    ("judge_id", ["depth.exits=[1,2]", "judge=pandalm", "judge.against={root}/other"],
     "judge.model='WeOpenML/PandaLM-7B-v1' cannot be loaded"),
]


@pytest.mark.parametrize("name, overrides, message", BAD, ids=[b[0] for b in BAD])
def test_bad_soft_input_is_one_error_line_before_training(name, overrides, message, folders, env, tmp_path):
    args = [o.replace("{root}", str(folders)) for o in overrides]
    proc = run([*TINY, f"data.source={folders / 'qa.jsonl'}", *args, f"hydra.run.dir={tmp_path}"], env, timeout=180)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == 2 and last.startswith("error: ") and message in last, proc.stderr[-2000:]
    assert not (tmp_path / "run_info.json").exists() and not (tmp_path / "checkpoints").exists()


VALIDATE = [  # caught by validation alone (what run.py calls first), checked in-process
    (["depth.exits=[1,2]", "depth.eval_exits=[1,3]"], "depth.eval_exits[1]=3 is beyond the model's 2 layers"),
    (["depth.truncate=4"], "depth.truncate=4 is beyond the model's 2 layers"),
    (["depth.truncate=1", "depth.exits=[2]"], "depth.exits[0]=2 is beyond the truncated model's 1 layers"),
    (["depth.exits=[1,2]", "judge=smollm2_standin", "judge.model=/no/such/judge", "judge.against={root}/other"],
     "judge.model='/no/such/judge': no such folder"),
    (["depth.exits=[1,2]", "judge=smollm2_standin", "judge.model=random:nosuch", "judge.against={root}/other"],
     "judge.model='random:nosuch': unknown architecture"),
    (["depth.exits=[1,2]", "judge=reference", "judge.against={root}"], "no generations.jsonl there"),
    (["depth.exits=[1,2]", "judge.against={root}/other"], "but judge=none: choose a judge"),
    (["judge.kind=logprob"], "judge.model is missing"),
    (["judge=reference", "judge.calibrate=true"], "judge.calibrate=true reads an LM judge's log-odds"),
    (["judge=reference", "judge.prompt=gpt"], "judge.prompt='gpt' is not an option; valid choices: pandalm, chat"),
    (["depth.exit_heads=true"], "depth.exit_heads=true (SFT+ICT: a new head per exit) needs depth.exits"),
]


@pytest.mark.parametrize("overrides, message", VALIDATE)
def test_bad_soft_options_are_one_line_config_errors(overrides, message, folders):
    from experiments.core.config import ConfigError

    cfg = compose_cfg([*TINY, *(o.replace("{root}", str(folders)) for o in overrides)])
    with pytest.raises(ConfigError) as err:
        tasks.validate(cfg, machine=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)
