"""The one entry point: `python run.py [task=train|eval|report] [group=option ...] [key=value ...]`.

Dispatches a task and nothing else; heavy libraries are imported inside the task so that
`python run.py --help` and `--cfg job` stay fast.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"


def _check_group_choices(argv: list[str]) -> None:
    """Fail fast, on one line, on `group=option` overrides naming an option that does not exist.

    Hydra's own message for this spans a dozen lines; the yaml files are the list of choices.
    """
    for arg in argv:
        if arg.startswith(("-", "+", "~", "hydra")) or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        group = CONF_DIR / key.replace(".", "/")
        if not group.is_dir() or key.startswith("/"):
            continue
        choices = sorted(str(p.relative_to(group).with_suffix("")) for p in group.rglob("*.yaml"))
        for option in value.split(","):  # multirun sweeps list several options
            if option and option not in choices:
                sys.exit(f"error: {key}={option} is not an option of config group '{key}'; "
                         f"valid choices: {', '.join(choices)}")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from experiments.core.quiet import quiet_libraries

    quiet_libraries(verbose=bool(_hydra_verbose()))
    from experiments.core.config import ConfigError
    from experiments.core.tasks import run_task

    try:
        return run_task(cfg)
    except ConfigError as err:  # a user mistake: one clear line, non-zero exit, nothing written
        print(f"error: {err}", file=sys.stderr)
        if _in_multirun():
            raise  # a sweep job: Hydra records it as failed (job_status.json) and the other jobs still run
        sys.exit(2)


def _hydra_verbose():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().verbose if HydraConfig.initialized() else False


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _short_help(argv: list[str]) -> bool:
    """`--help` alone, or `--help <group>`: our short map (experiments/core/help.py); any other `--help` is Hydra's."""
    if not argv or argv[0] not in ("--help", "-h") or len(argv) > 2 or (len(argv) == 2 and "=" in argv[1]):
        return False
    from experiments.core.help import group_help, main_help

    try:
        print(group_help(CONF_DIR, argv[1]) if len(argv) == 2 else main_help(CONF_DIR))
    except ValueError as err:
        sys.exit(print(f"error: {err}", file=sys.stderr) or 2)
    return True


if __name__ == "__main__":
    if _short_help(sys.argv[1:]):
        sys.exit(0)
    _check_group_choices(sys.argv[1:])
    main()
