"""What a run needs around its paradigm: its folder, a Trainer, stages and exact resume.

- ``RunContext``: the config, the run folder and the overrides; ``ctx.trainer()`` builds a Lightning
  Trainer from the ``trainer`` / ``logger`` / ``callbacks`` / ``checkpoint`` groups.
- Exact resume: ``checkpoints/last.ckpt`` is written every ``checkpoint.every_n_steps`` optimizer steps
  and at the end of training, atomically (a temporary file renamed over the old one, so a kill mid-write
  leaves the previous checkpoint). Running the same command on the same folder (``hydra.run.dir=<it>``)
  continues from it: weights, optimizers, schedulers, loop counters, the data position (the training
  loaders are resumable, data/resumable.py), the random-number state; the sampler is a pure function of
  (seed, step). The folder's ``resume_config.yaml`` guards against continuing with another config.
- Stages: ``init_from=<run folder or .ckpt>`` starts training from an earlier run's trained weights; the
  source is recorded in ``run_info.json``.
- The folder is a record (docs/ARCHITECTURE.md, "What a run folder promises"): ``accept`` checks the command
  against the folder reading nothing but its files; only then ``owned`` takes the folder's lock (one writer)
  and writes ``.hydra/``; ``results.json`` is written last. Every checkpoint is read with
  ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import ConfigError, get, instantiate
from experiments.core.schema import CheckpointSchema, LatencySchema, TrainerSchema, options

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
RESULTS = "results.json"  # written last: a folder holding it is a finished run
LOCK = ".lock"            # flock'ed by the process that owns the folder
RESUME_CONFIG = "resume_config.yaml"
RUN_DIR_TOKEN = "${run_dir}"  # the run folder inside resume_config.yaml: a moved or copied folder still resumes
RESUME_EXEMPT = ("threads", "task", "checkpoint.resume")  # may differ between a run and its continuation


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    overrides: list[str] = field(default_factory=list)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> "RunContext":
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return cls(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task))

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR / LAST

    def trainer(self, with_callbacks: bool = True, **overrides: Any):
        return build_trainer(self.cfg, self.run_dir, with_callbacks, **overrides)

    def accept(self) -> None:
        """Is this command accepted for this folder? Reads only (a refused command changes nothing there): the
        same config, and a checkpoint to continue from that reads back (a finished run is not read again)."""
        if options(self.cfg, "checkpoint", CheckpointSchema).resume:
            check_same_config(self.cfg, self.run_dir)
            if not (self.run_dir / RESULTS).is_file():
                self.resume_checkpoint()

    @contextlib.contextmanager
    def owned(self):
        """The folder's lock for the whole run (one writer per folder), then the ``.hydra/`` record. Only the
        process of rank 0 writes (the other DDP ranks rerun the command inside the same job)."""
        if process_rank() != 0:
            yield
            return
        with folder_lock(self.run_dir):
            write_hydra_record(self.run_dir, self.cfg)
            yield

    def resume_checkpoint(self) -> Path | None:
        """``last.ckpt`` of this folder when the run continues (and the config is the same), else None."""
        if not options(self.cfg, "checkpoint", CheckpointSchema).resume or not self.last_checkpoint.is_file():
            return None
        check_same_config(self.cfg, self.run_dir)
        read_checkpoint(self.last_checkpoint, "checkpoint.resume",  # readable before training starts from it
                        fix="delete it to train from the start, or restore it from a copy")
        return self.last_checkpoint

    def finished_results(self) -> dict[str, Any] | None:
        """The results of a run that already finished in this folder with this config (it is not redone)."""
        path = self.run_dir / RESULTS
        if not options(self.cfg, "checkpoint", CheckpointSchema).resume or not path.is_file():
            return None
        check_same_config(self.cfg, self.run_dir)
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as err:
            raise ConfigError(f"{path} is truncated or not JSON ({type(err).__name__}); delete it and rerun the "
                              "same command: training resumes from its checkpoint and the evaluation is redone") \
                from None

    def remember_config(self) -> None:
        path = self.run_dir / RESUME_CONFIG
        if not path.exists():
            path.write_text(OmegaConf.to_yaml(OmegaConf.create(_portable(_resolved(self.cfg), self.run_dir))))


def process_rank() -> int:
    """This process's rank in its job (SLURM task, torchrun / Lightning DDP child); 0 alone."""
    return int(next((os.environ[k] for k in ("SLURM_PROCID", "RANK", "LOCAL_RANK") if k in os.environ), 0))


@contextlib.contextmanager
def folder_lock(run_dir: Path):
    """An exclusive ``flock`` on ``<run_dir>/.lock`` while the block runs; a held lock is one clear line."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"hydra.run.dir={str(run_dir)!r} is in use by another run (it holds {LOCK}); wait "
                              "for it to end, or give another hydra.run.dir") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock (and a killed process's lock goes with it)


def write_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, but only once the command is accepted
    (conf/config.yaml sets ``hydra.output_subdir: null`` so that Hydra itself does not write them at start)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import _save_config

    if not HydraConfig.initialized():  # in-process use without a Hydra run
        return
    hc = HydraConfig.get()
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(hc, resolve=False)})
    hydra_cfg.hydra.output_subdir = ".hydra"
    out = run_dir / ".hydra"
    _save_config(cfg, "config.yaml", out)
    _save_config(hydra_cfg, "hydra.yaml", out)
    _save_config(OmegaConf.create(list(hc.overrides.task)), "overrides.yaml", out)


def run_dir_of() -> Path:
    """The folder Hydra made for this job (standalone tasks write their files there too)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


# --- the trainer ------------------------------------------------------------------------------------
def quiet_duplicate_logs() -> None:
    """Lightning adds its own console handler although Hydra already prints (and files) every record:
    drop Lightning's, so each line appears once."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)


def progress_bar_wanted(cfg: DictConfig) -> bool:
    """``trainer.enable_progress_bar: null`` = on when a person watches (stderr is a terminal), off in CI."""
    setting = get(cfg, "trainer.enable_progress_bar")
    if setting is not None:
        return bool(setting)
    return sys.stderr.isatty() and not os.environ.get("CI")


def build_trainer(cfg: DictConfig, run_dir: Path, with_callbacks: bool = True, **overrides: Any):
    import lightning.pytorch  # noqa: F401  (installs Lightning's console handler, removed next)

    from experiments.core.callbacks import AtomicCheckpointIO, FiniteLoss, RunCheckpoint
    from experiments.core.loggers import build_loggers

    quiet_duplicate_logs()
    if get(cfg, "trainer.strategy") == "ddp_spawn" and get(cfg, "trainer.accelerator") == "cpu":
        import torch

        torch.multiprocessing.set_sharing_strategy("file_system")  # fd sharing fails on some hosts
    from lightning.pytorch.callbacks import LearningRateMonitor

    loggers = build_loggers(cfg)
    callbacks = []
    if with_callbacks:
        callbacks = [instantiate(c) for c in (get(cfg, "callbacks") or {}).values()]
        if not loggers:  # logger=none: nothing to write learning rates to (Lightning refuses the monitor)
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        every = options(cfg, "checkpoint", CheckpointSchema).every_n_steps
        callbacks.append(FiniteLoss(every=options(cfg, "trainer", TrainerSchema).log_every_n_steps,
                                    checkpoint_every=every))
        callbacks.append(RunCheckpoint(dirpath=str(run_dir / CHECKPOINT_DIR), every_n_train_steps=every))
    settings = {"enable_progress_bar": progress_bar_wanted(cfg), **overrides}
    if settings["enable_progress_bar"]:
        from experiments.core.progress import StepProgressBar

        callbacks.append(StepProgressBar())
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                       default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()],
                       enable_checkpointing=with_callbacks, **settings)


def latency_device(cfg: DictConfig):
    """Where latencies are measured (``latency.device``): auto = the GPU when training ran on one."""
    import torch

    want = options(cfg, "latency", LatencySchema).device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()
                          and get(cfg, "trainer.accelerator") in ("gpu", "cuda", "auto")):
        return torch.device("cuda")
    return torch.device("cpu")


# --- resume -----------------------------------------------------------------------------------------
def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def _resolved(cfg: DictConfig) -> dict:
    """The config as plain data, interpolations resolved (kept as written outside a Hydra run)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # ${hydra:...} without a Hydra run (in-process use)
        return OmegaConf.to_container(cfg, resolve=False)


def _portable(node: Any, run_dir: Path) -> Any:
    """The config with this folder's own path written as ``${run_dir}`` (it may be moved or copied)."""
    here = str(run_dir.resolve())
    if isinstance(node, dict):
        return {k: _portable(v, run_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_portable(v, run_dir) for v in node]
    return node.replace(here, RUN_DIR_TOKEN) if isinstance(node, str) and here in node else node


def check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    path = run_dir / RESUME_CONFIG
    if not path.exists():
        return
    before = _flat(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    now = _flat(_portable(_resolved(cfg), run_dir))
    changed = sorted(k for k in set(before) | set(now)
                     if before.get(k) != now.get(k) and not k.startswith(RESUME_EXEMPT))
    if changed:
        k = changed[0]
        raise ConfigError(f"hydra.run.dir={str(run_dir)!r} holds a run of another config ({len(changed)} keys "
                          f"differ, e.g. {k}: {before.get(k)!r} there, {now.get(k)!r} now): rerun with the same "
                          "overrides to continue it, or give a new hydra.run.dir")


# --- stages and checkpoints ----------------------------------------------------------------------------
def checkpoint_of(source: str | Path, key: str = "init_from") -> Path:
    """A run folder (its checkpoints/last.ckpt) or a checkpoint file."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST
    if not path.is_file():
        raise ConfigError(f"{key}={str(source)!r}: no checkpoint there; give a run folder holding "
                          f"{CHECKPOINT_DIR}/{LAST} or a .ckpt file")
    return path


def read_checkpoint(path: Path, key: str, fix: str = "give a checkpoint written by task=train") -> dict[str, Any]:
    """A checkpoint as plain tensors and containers: ``weights_only=True``, so a file that is not one of
    ours (a pickle holding code) is refused without running anything."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a checkpoint at all, or a pickle that would run code
        first = (str(err).strip().splitlines() or ["unreadable"])[0][:200]
        raise ConfigError(f"{key}={str(path)!r} is not a readable checkpoint ({type(err).__name__}: {first}); "
                          f"{fix}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"{key}={str(path)!r} is not a Lightning checkpoint written by task=train")
    return ckpt


def load_trained_weights(module, path: Path, key: str, require_all: bool = True) -> dict[str, Any]:
    """Load a checkpoint's (trainable) weights into ``module``. ``require_all``: every trainable weight of
    ``module`` must be there (task=eval); otherwise at least one must match (a stage may train other
    weights than the one it starts from). Returns what was loaded, for run_info.json."""
    ckpt = read_checkpoint(path, key)
    state = ckpt["state_dict"]
    own = dict(module.state_dict())
    trainable = [k for k, p in module.named_parameters() if p.requires_grad]
    missing = [k for k in trainable if k not in state]
    matched = [k for k in state if k in own]
    if require_all and missing:
        raise ConfigError(f"{key}={str(path)!r} does not match this config ({len(missing)} trainable weights "
                          f"missing, e.g. {missing[0]})")
    if not matched:
        raise ConfigError(f"{key}={str(path)!r} holds no weight of this model (e.g. {next(iter(state), 'none')}): "
                          "was it written by a run of the same model?")
    shapes = [k for k in matched if tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise ConfigError(f"{key}={str(path)!r}: {k} has shape {tuple(state[k].shape)} there but "
                          f"{tuple(own[k].shape)} here")
    module.load_state_dict({k: state[k] for k in matched}, strict=False)
    return {"checkpoint": str(path.resolve()), "global_step": ckpt.get("global_step"), "tensors": len(matched)}


def apply_init_from(ctx: RunContext, module) -> dict[str, Any] | None:
    """Stage start: the earlier run's trained weights into ``module``; its description (also recorded)."""
    source = get(ctx.cfg, "init_from")
    if not source:
        return None
    path = checkpoint_of(source)
    stage = load_trained_weights(module, path, "init_from", require_all=False)
    run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else None
    if run_dir is not None and (run_dir / "run_info.json").exists():
        import json

        stage["run_dir"] = str(run_dir.resolve())
        stage["git"] = json.loads((run_dir / "run_info.json").read_text()).get("git")
    return stage
