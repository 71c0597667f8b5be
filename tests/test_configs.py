"""Every experiment preset composes and passes its paradigm's checks (nothing is loaded)."""
import importlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.tasks import PARADIGMS
from tests.conftest import ROOT

EXPERIMENTS = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
                     for p in (ROOT / "conf" / "experiment").rglob("*.yaml"))


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_validates(experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    OmegaConf.resolve(cfg.model)  # interpolations resolve
    paradigm = importlib.import_module(PARADIGMS[cfg.paradigm])
    paradigm.validate(cfg)


def test_full_scale_presets_name_real_hub_ids():
    for name in ("llama_7b", "llama_13b", "llama2_13b", "falcon_40b"):
        cfg = compose_cfg([f"experiment=qdylora/{name}"])
        assert cfg.model.name_or_path.count("/") == 1  # org/name on the HF hub
        assert cfg.adapter.r_max == 64 and cfg.quantization.config.bnb_4bit_use_double_quant
        assert cfg.data.source in {"alpaca", "gsm8k"}


def test_every_option_in_a_group_yaml_has_a_comment():
    """Users read the yaml files as documentation: each group file starts with a comment line."""
    for path in (ROOT / "conf").rglob("*.yaml"):
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} has no leading comment"
