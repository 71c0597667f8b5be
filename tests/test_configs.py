"""Every experiment preset composes and passes its paradigm's checks (nothing is loaded)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.core import tasks
from experiments.core.config import ConfigError
from experiments.paradigms import lm
from tests.conftest import ROOT

EXPERIMENTS = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
                     for p in (ROOT / "conf" / "experiment").rglob("*.yaml"))


def validate(cfg):
    """Everything run.py checks before loading anything, less the machine (presets name GPUs)."""
    return tasks.validate(cfg, machine=False)


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_validates(experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    OmegaConf.resolve(cfg.get("model") or cfg.get("generator"))  # interpolations resolve (continual: generator)
    assert validate(cfg).name == cfg.paradigm


def test_full_scale_presets_name_real_hub_ids():
    for name in ("llama_7b", "llama_13b", "llama2_13b", "falcon_40b"):
        cfg = compose_cfg([f"experiment=qdylora/{name}"])
        assert cfg.model.name_or_path.count("/") == 1  # org/name on the HF hub
        assert cfg.adapter.r_max == 64 and cfg.quantization.config.bnb_4bit_use_double_quant
        assert cfg.data.source in {"alpaca", "gsm8k"}


def _option_lines(path: Path) -> set[str]:
    """The ``key: value`` lines of a preset (comments, blanks and bare group headers left out)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if ":" in line and not line.endswith(":")}


def test_variants_of_a_paper_inherit_instead_of_copying():
    """A variant (another base model, dataset or task) lists its paper's base preset in its defaults and states
    only what differs; two presets sharing this many settings have been copied (the stage presets of KnGPT2
    share 13, the most today)."""
    for paper in (ROOT / "conf" / "experiment").iterdir():
        presets = sorted(paper.glob("*.yaml"))
        for i, a in enumerate(presets):
            for b in presets[i + 1:]:
                shared = _option_lines(a) & _option_lines(b)
                assert len(shared) < 14, f"{a.relative_to(ROOT)} and {b.name} share {len(shared)} settings"
    thin = {"qdylora/llama_13b": "qdylora/llama_7b", "qdylora/falcon_40b": "qdylora/llama_7b",
            "sortednet/vit_b16_cifar100": "sortednet/vit_b16_cifar10", "focl/svhn": "focl/mnist",
            "whisper/er_iemocap": "whisper/ks_speech_commands"}
    for variant, base in thin.items():
        defaults = OmegaConf.load(ROOT / "conf" / "experiment" / f"{variant}.yaml").defaults
        assert defaults[0] == f"/experiment/{base}", variant


def test_every_option_in_a_group_yaml_has_a_comment():
    """Users read the yaml files as documentation: each group file starts with a comment line."""
    for path in (ROOT / "conf").rglob("*.yaml"):
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} has no leading comment"


@pytest.mark.parametrize("experiment", ["qdylora/quick", "qdylora/llama2_13b_gsm8k"])
def test_matryoshka_preset_composes_and_trains_at_the_largest_rank(experiment):
    from modules.submodel import FixedSampler, SubModel

    cfg = compose_cfg([f"experiment={experiment}", "adapter=matryoshka_lora"])
    assert cfg.adapter.kind == "nested_lora" and cfg.adapter.matryoshka is True and cfg.adapter.r_min == 1
    validate(cfg)
    sampler = lm.training_sampler(cfg, lm.rank_axes(cfg))  # what build_module uses: no rank is drawn
    assert isinstance(sampler, FixedSampler) and sampler.submodels(3) == [SubModel.of(rank=cfg.adapter.r_max)]
    default = compose_cfg([f"experiment={experiment}"])  # dylora: matryoshka off, the rank is drawn
    assert default.adapter.matryoshka is False
    assert type(lm.training_sampler(default, lm.rank_axes(default))).__name__ == "UniformSampler"


@pytest.mark.parametrize("overrides, message", [
    (["sampling.distribution=normal"], "sampling.distribution='normal' is not an option; valid choices: uniform, log_uniform"),
    (["sampling.weights={rank:[1,2]}"], r"sampling.weights.rank has 2 weights but axis 'rank' has 8 values"),
    (["sampling.weights={rank:[0,0,0,0,0,0,0,0]}"], "sampling.weights.rank must be finite, >= 0 and not all zero"),
    (["sampling.weights={depth:[1]}"], "sampling.weights.depth: no such axis; valid choices: rank"),
    (["sampling=sandwich", "sampling.distribution=cauchy"], "sampling.distribution='cauchy' is not an option"),
    (["sampling=uniform", "sampling.num_per_step=0"], "sampling.num_per_step must be >= 1"),
    (["sampling=fixed", "sampling.choice={rank:9}"], "sampling: sub-model 'rank=9' is outside the space"),
    (["adapter=matryoshka_lora", "sampling=all"], "adapter.matryoshka=true .* sampling=all conflicts"),
    (["adapter=matryoshka_lora", "sampling=sandwich"], "sampling=sandwich conflicts"),
    (["adapter=matryoshka_lora", "sampling.distribution=log_uniform"], "sampling=uniform .* conflicts"),
    (["adapter=matryoshka_lora", "sampling=fixed", "sampling.choice={rank:2}"], "sampling=fixed at rank=2 conflicts"),
    (["adapter=matryoshka_lora", "adapter.frozen_prefix=true"], "cannot be combined with adapter.frozen_prefix"),
    (["adapter.matryoshka=yes"], "adapter.matryoshka must be true or false, got 'yes'"),
    (["adapter=peft_lora", "+adapter.matryoshka=true"], "adapter.matryoshka is not an option of adapter; valid options: kind, r_max"),
])
def test_bad_sampling_and_matryoshka_choices_are_one_line_errors(overrides, message):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_rank_distribution_options_validate():
    for overrides in (["sampling.distribution=log_uniform"], ["sampling.weights={rank:[8,4,2,1,1,1,1,1]}"],
                      ["sampling=sandwich", "sampling.distribution=log_uniform"],
                      ["adapter=matryoshka_lora", "sampling=fixed"]):
        validate(compose_cfg(overrides))
