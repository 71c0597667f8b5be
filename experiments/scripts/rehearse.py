"""Rehearsals in this process (tests, the GPU check): compose ``run.py experiment=<preset> rehearsal=tiny`` and run it.

``python -m experiments.scripts.rehearse [<preset> ...]`` rehearses the presets named (all full-scale ones by
default) one after another and prints each one's wall time (docs/rehearsal.md).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from experiments.core.config import CONF_DIR




def full_scale_presets() -> list[str]:
    """Every preset under conf/experiment/<paper>/ whose name does not contain "quick"."""
    return sorted(str(p.relative_to(CONF_DIR / "experiment").with_suffix("")) for p in (CONF_DIR / "experiment").rglob("*.yaml")
                  if "quick" not in p.stem)


def compose_run(preset: str, run_dir: Path, overrides: tuple[str, ...] = (), rehearsal: str = "tiny") -> DictConfig:
    """The config ``python run.py experiment=<preset> rehearsal=<rehearsal> <overrides>`` would run, with
    Hydra's runtime set as in that command (its output folder ``run_dir``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}", f"rehearsal={rehearsal}", *overrides],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return cfg


def run_preset(preset: str, run_dir: Path, overrides: tuple[str, ...] = (), rehearsal: str = "tiny") -> Any:
    """Run ``task=train`` of a preset's rehearsal in this process (what ``run.py`` does, minus its process)."""
    from experiments.core.tasks import run_task

    return run_task(compose_run(preset, Path(run_dir), overrides, rehearsal))


def main(argv: list[str]) -> int:
    out = Path("outputs/rehearsals")
    failed = []
    for preset in argv or full_scale_presets():
        start = time.time()
        try:
            run_preset(preset, out / preset.replace("/", "_"), ("threads=1",))
            print(f"rehearsed {preset} in {time.time() - start:.1f} s", file=sys.stderr)
        except Exception as err:  # keep going: the summary names every preset that failed
            failed.append(preset)
            print(f"FAILED {preset}: {type(err).__name__}: {err}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
