"""The one entry point: `python run.py [task=train|eval|report] [group=option ...] [key=value ...]`.

Dispatches a task and nothing else; heavy libraries are imported inside the task so that
`python run.py --help` and `--cfg job` stay fast. Every error a user can cause is one line
`error: ...`: exit 2 for a mistake in the command or config (Hydra's own included), 1 for a run that
could not go on (it diverged, a disk is full), 143 after SIGTERM (a checkpoint saved when training).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"
SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended


def _config_dirs(argv: list[str]) -> list[Path]:
    """conf/ and every ``--config-dir`` / ``-cd`` of the command line (their groups add options)."""
    dirs = [CONF_DIR]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]).expanduser())
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.partition("=")[2]).expanduser())
    return dirs


def _check_group_choices(argv: list[str]) -> None:
    """Fail fast, on one line, on `group=option` overrides naming an option that does not exist.

    Hydra's own message for this spans a dozen lines; the yaml files are the list of choices.
    """
    dirs = _config_dirs(argv)
    for arg in argv:
        if arg.startswith(("-", "+", "~", "hydra")) or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        groups = [d / key.replace(".", "/") for d in dirs]
        groups = [g for g in groups if g.is_dir()]
        if not groups or key.startswith("/"):
            continue
        choices = sorted({str(p.relative_to(g).with_suffix("")) for g in groups for p in g.rglob("*.yaml")})
        for option in value.split(","):  # multirun sweeps list several options
            if option and option not in choices:
                print(f"error: {key}={option} is not an option of config group '{key}'; "
                      f"valid choices: {', '.join(choices)}", file=sys.stderr)
                sys.exit(2)


def _error_line(err: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an error a user can cause."""
    from experiments.core.config import ConfigError, describe_os_error

    if isinstance(err, ConfigError):
        return 2, str(err)
    if isinstance(err, OSError):
        path = err.filename or (str(err).splitlines() or ["a file"])[0]
        if isinstance(err, FileNotFoundError):
            return 2, f"{path}{': no such file or directory' if err.filename else ''}; check the path in the " \
                      "command or config"
        return 1, (f"{path}: {describe_os_error(err)}; free space or fix permissions, then rerun the same command "
                   "(what was written before is intact)")
    return 1, str(err)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")  # absolute: also when imported
def main(cfg: DictConfig) -> float | None:
    from experiments.core.quiet import quiet_libraries

    quiet_libraries(verbose=bool(_hydra_verbose()))
    from experiments.core.config import ConfigError, RunError
    from experiments.core.tasks import run_task

    try:
        return run_task(cfg)
    except (ConfigError, RunError, OSError) as err:  # one clear line, non-zero exit
        code, line = _error_line(err)
        print(f"error: {line}", file=sys.stderr)
        if _in_multirun():
            raise  # a sweep job: Hydra records it as failed (job_status.json) and the other jobs still run
        sys.exit(code)
    except SystemExit as stop:
        if type(stop).__name__ == "SIGTERMException":  # Lightning stopped after the batch (and we saved)
            print("error: stopped by SIGTERM; rerun the same command to continue from checkpoints/last.ckpt",
                  file=sys.stderr)
            sys.exit(SIGTERM_EXIT)
        raise
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)


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


def _check_targets_before_hydra_callbacks() -> None:
    """Hydra instantiates ``hydra.callbacks`` before any task runs: check every ``_target_`` of the composed
    config (at every depth) and of hydra.callbacks first (pinned hydra-core 1.3.x: ``Callbacks(cfg)``)."""
    from hydra._internal import callbacks

    from experiments.core.config import ConfigError, check_targets

    original = callbacks.Callbacks.__init__
    if getattr(original, "checks_targets", False):  # already in place (cli called again in one process)
        return

    def checked(self, config=None, *args, **kwargs):
        if config is not None:
            try:
                check_targets({k: v for k, v in config.items_ex(resolve=False) if k != "hydra"})
                check_targets(config.hydra.get("callbacks"), "hydra.callbacks.")
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
        original(self, config, *args, **kwargs)

    checked.checks_targets = True
    callbacks.Callbacks.__init__ = checked


def _exit_code_of(err: Exception) -> tuple[int, str | None]:
    """A failure that reached the top: a sweep job's error (its line was printed when it failed) or one of
    Hydra's own (a yaml error, an override of a key or group that is not there): one line, exit 2."""
    from omegaconf.errors import OmegaConfBaseException

    from experiments.core.config import ConfigError, RunError

    if isinstance(err, (ConfigError, RunError, OSError)):  # only a sweep job's error gets here (re-raised)
        return _error_line(err)[0], ("some sweep jobs failed (each one's line is above and in its "
                                     "job_status.json); the others finished")
    import yaml
    from hydra.errors import HydraException

    if isinstance(err, (HydraException, OmegaConfBaseException, yaml.YAMLError)):
        text = " ".join(str(err).split())
        return 2, (text[:400] + " ...") if len(text) > 400 else text
    raise err


def cli(argv: list[str]) -> int:
    """What ``python run.py <argv>`` does, as a function (the tests call it in-process): its exit status."""
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    saved_argv = sys.argv
    try:
        if _short_help(argv):
            return 0
        _check_group_choices(argv)
        _check_targets_before_hydra_callbacks()
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's errors reach us unprinted, to be said in one line
        sys.argv = [str(Path(__file__).resolve()), *argv]  # hydra.main reads the command line from sys.argv
        try:
            main()
        except Exception as failure:
            if full_error == "1":
                raise
            code, line = _exit_code_of(failure)
            print(f"error: {line}", file=sys.stderr)
            return code
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.argv = saved_argv
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
