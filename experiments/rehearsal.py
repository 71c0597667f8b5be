"""``rehearsal=tiny``: run a full-scale preset end to end on a CPU, everything real except size (docs/rehearsal.md).

``rehearse(cfg)`` rewrites the composed config before any check or load:

- model: a random model of the same transformers class as the preset's hub id (``modules.hf_model.shrunk_config``),
  the byte tokenizer; as deep as the real one where the preset's grid names layers (SoFT exits, SortedNet
  depths, Whisper probe layers), else ``rehearsal.layers``; the PandaLM judge likewise (a shrunk LLaMA);
- data: the generated copy of the preset's dataset in its real schema (data/fixtures.py), read by the same
  loader (``$LAB_DATASETS_MIRROR`` for hub ids, ``data.root`` for speech folders), a few examples per split;
- trainer: one device (``rehearsal.accelerator``: the CPU, or one GPU in bf16 for the GPU check),
  ``rehearsal.steps`` optimizer steps, ``rehearsal.eval_batches`` batches per evaluation; a strategy that
  needs several GPUs (FSDP, DeepSpeed, multi-GPU DDP) is dropped and named in ``notes``
  ("not rehearsed on CPU: fsdp").

Everything after training (the evaluation grid, generations, tables, exports) runs as the preset says.
``mark_run`` then records the rehearsal in run_info.json and results.json and heads results.md with it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.core.config import get
from experiments.core.schema import RehearsalSchema, TrainerSchema, check, options
from experiments.results.files import write_json
from experiments.results.tables import rehearsal_caption

GPU_STRATEGIES = ("fsdp", "deepspeed", "ddp", "ddp_spawn")


def enabled(cfg: DictConfig) -> bool:
    return options(cfg, "rehearsal", RehearsalSchema).enabled


def caption(cfg_or_name: Any) -> str:
    name = cfg_or_name if isinstance(cfg_or_name, str) else options(cfg_or_name, "rehearsal", RehearsalSchema).name
    return rehearsal_caption(name)


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    OmegaConf.update(cfg, key, value, force_add=True, merge=False)


def _cap(cfg: DictConfig, key: str, limit: int) -> None:
    """``key`` lowered to ``limit`` (null = all rows counts as above it)."""
    value = get(cfg, key)
    _set(cfg, key, limit if value is None or int(value) > limit else int(value))


def rehearse(cfg: DictConfig) -> DictConfig:
    """The rehearsal of ``cfg`` (``cfg`` itself when ``rehearsal.enabled`` is false)."""
    if not enabled(cfg):
        return cfg
    check(cfg, "rehearsal", RehearsalSchema)  # before its options shape anything
    from data import fixtures

    r = options(cfg, "rehearsal", RehearsalSchema)
    notes: list[str] = []
    with open_dict(cfg):
        paradigm = str(cfg.paradigm)
        datasets = _data(cfg, r, paradigm)
        root = fixtures.ensure_fixtures(datasets, r.fixtures_dir)
        os.environ[fixtures.MIRROR_ENV] = str(root)
        if paradigm == "speech":
            _set(cfg, "data.root", str(root / "speech" / str(cfg.data.task)))
        _model(cfg, r, paradigm)
        _trainer(cfg, r, paradigm, notes)
        _set(cfg, "rehearsal.notes", notes)
        _set(cfg, "rehearsal.datasets", datasets)
    print(f"rehearsal={r.name}: {caption(cfg)}")
    for note in notes:
        print(f"rehearsal: {note}")
    return cfg


# --- data --------------------------------------------------------------------------------------------------
def _data(cfg: DictConfig, r: RehearsalSchema, paradigm: str) -> list[str]:
    """Limit every split to a few examples; the fixtures the preset's data reads (hub ids / speech tasks)."""
    from data import fixtures

    n = int(r.examples)
    if paradigm == "lm":
        from data.instruct_sources import SOURCES

        names = [SOURCES[s].dataset_id for s in (get(cfg, "data.source"), get(cfg, "data.mc_eval.source"))
                 if s in SOURCES]
        for key in ("data.limit_train", "data.limit_val", "data.limit_test"):
            _cap(cfg, key, n)
        if get(cfg, "data.mc_eval"):
            _cap(cfg, "data.mc_eval.limit", n)
        _cap(cfg, "eval.max_new_tokens", int(r.max_new_tokens))
        return names
    if paradigm in ("glue", "distill_glue"):
        for key in ("data.limit_train", "data.limit_val", "data.limit_test"):
            _cap(cfg, key, n)
        _set(cfg, "data.val_size", n // 2)  # rows held out of train (a fraction of 16 rows would be ~1)
        return [str(cfg.data.hf_id)] if get(cfg, "data.source") == "hf" else []
    if paradigm == "distill_lm":
        for key in ("data.limit_train", "data.limit_val", "data.limit_test"):
            _cap(cfg, key, n)
        return [str(cfg.data.hf_id)] if get(cfg, "data.source") == "hf" else []
    if paradigm == "vision":
        from data.images import SOURCES

        side = int(r.image_size)
        _set(cfg, "data.image_size", side)
        _set(cfg, "data.num_workers", 0)  # no loader processes for a handful of images
        hf_id = get(cfg, "data.hf_id") or SOURCES[str(cfg.data.source)].hf_id
        return [hf_id] if hf_id in fixtures.HUB else []
    if paradigm == "speech":
        _cap(cfg, "data.limit_train", n)
        _cap(cfg, "data.limit_eval", n)
        if get(cfg, "corruption.babble_pool") is not None:
            _set(cfg, "corruption.babble_pool", min(int(cfg.corruption.babble_pool), n))
        return [str(cfg.data.task)] if str(cfg.data.task) in fixtures.SPEECH else []
    if paradigm == "continual":
        from data.continual_sources import SOURCES

        _cap(cfg, "continual.replay_batch", n)
        _cap(cfg, "data.batch_size", 1)  # a task's few images must fill one generator step's critic batches
        _cap(cfg, "eval.n_per_class", n)
        _cap(cfg, "eval.samples_per_class", 2)
        _set(cfg, "data.val_fraction", 0.5)  # a few images per class: the carve must leave each class some
        _cap(cfg, "generator.n_critic", 2)  # and one generator step's critic batches must fit in what is left
        _set(cfg, "eval.min_classifier_acc", 0.0)  # a judge of random-looking fixture images cannot be held to 0.9
        hf_id = get(cfg, "data.hf_id") or SOURCES[str(cfg.data.source)].hf_id
        return [hf_id] if hf_id in fixtures.HUB else []
    return []


# --- model -------------------------------------------------------------------------------------------------
def _model(cfg: DictConfig, r: RehearsalSchema, paradigm: str) -> None:
    from modules.hf_model import architecture_of, materialize_random, shrunk_config

    hidden, heads, layers = int(r.hidden), int(r.heads), int(r.layers)
    name = get(cfg, "model.name_or_path")
    if paradigm in ("lm", "glue", "distill_lm", "distill_glue") and name:
        arch = architecture_of(str(name))
        exits = [int(e) for e in (get(cfg, "depth.exits") or []) + (get(cfg, "depth.eval_exits") or [])]
        depth = max(exits) if exits else layers  # SoFT's exits are layer numbers of the real model
        positions = max(int(get(cfg, "data.max_length") or 0), int(get(cfg, "data.block_size") or 0), 128) + 8
        _set(cfg, "model.random_config", shrunk_config(arch, depth, hidden, heads, positions))
        _set(cfg, "model.name_or_path", f"random:{arch}")
        _set(cfg, "rehearsal.replaced.model", str(name))
    if paradigm == "vision" and name:
        real_heads, real_layers = int(cfg.model.num_attention_heads), int(cfg.model.num_hidden_layers)
        head_size = 4
        small = real_heads * head_size
        scale = small / int(cfg.model.hidden_size)
        folder = materialize_random("vit", {**shrunk_config("vit", real_layers, small, real_heads),
                                            "image_size": int(r.image_size), "patch_size": 8, "num_channels": 3},
                                    head="image_classification")
        for key, value in (("hidden_size", small), ("intermediate_size", 4 * small), ("image_size", int(r.image_size)),
                           ("patch_size", 8), ("name_or_path", str(folder))):
            _set(cfg, f"model.{key}", value)
        _set(cfg, "rehearsal.replaced.model", str(name))
        widths = get(cfg, "nested.axes.width")
        if widths:  # the same grid, scaled to the shrunk width (multiples of the head size)
            _set(cfg, "nested.axes.width", [max(head_size, int(round(w * scale))) for w in widths])
        _set(cfg, "latency.batch_size", 2)
        _set(cfg, "latency.repeats", 1)
        _set(cfg, "latency.warmup", 0)
    if paradigm == "speech" and name:
        depth = int(get(cfg, "model.encoder_layers") or layers)  # the probes read every layer: the real count
        folder = materialize_random("whisper", shrunk_config("whisper", depth, hidden, heads), head="none")
        _set(cfg, "model.name_or_path", str(folder))
        _set(cfg, "model.encoder_layers", depth)
        _set(cfg, "rehearsal.replaced.model", str(name))
    if get(cfg, "latency.repeats"):
        _set(cfg, "latency.repeats", 1)
        _set(cfg, "latency.warmup", 0)
    if get(cfg, "judge.model"):  # PandaLM-7B -> a shrunk LLaMA of the same class
        judge = str(cfg.judge.model)
        arch = architecture_of(judge) if not Path(judge).exists() else "llama"
        folder = materialize_random(arch, shrunk_config(arch, layers, hidden, heads, 2048))
        _set(cfg, "judge.model", str(folder))
        _set(cfg, "judge.dtype", "float32")
        _set(cfg, "rehearsal.replaced.judge", judge)


# --- trainer -----------------------------------------------------------------------------------------------
def _trainer(cfg: DictConfig, r: RehearsalSchema, paradigm: str, notes: list[str]) -> None:
    trainer = options(cfg, "trainer", TrainerSchema)
    strategy = str(trainer.strategy)
    kind = strategy.split("_")[0] if strategy.startswith(("fsdp", "deepspeed")) else strategy
    if kind in GPU_STRATEGIES:
        why = {"ddp": " (2 gloo processes would relaunch the command; trainer=ddp_cpu rehearses DDP)",
               "ddp_spawn": " (trainer=ddp_cpu rehearses DDP)"}.get(kind, " (it shards over GPUs)")
        notes.append(f"not rehearsed on CPU: {kind}{why}")
    gpu = r.accelerator == "gpu"
    precision = str(trainer.precision)
    if gpu:
        precision = "bf16-mixed"  # what the full-scale presets train in
    elif precision not in ("32-true", "32", "bf16-mixed", "bf16-true"):
        precision = "32-true"  # 16-mixed needs a GPU
    settings = {"accelerator": "gpu" if gpu else "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                "precision": precision,
                "limit_val_batches": int(r.eval_batches), "limit_test_batches": int(r.eval_batches),
                "val_check_interval": None, "check_val_every_n_epoch": 10_000,  # no validation inside the few steps
                "log_every_n_steps": 1, "max_epochs": -1}
    if paradigm != "continual":  # continual sets max_steps per task from continual.steps_per_task
        settings["max_steps"] = int(r.steps)
    else:
        _set(cfg, "continual.steps_per_task", int(r.steps))
    for key, value in settings.items():
        _set(cfg, f"trainer.{key}", value)
    for key in ("sync_batchnorm", "plugins"):
        if get(cfg, f"trainer.{key}") is not None:
            cfg.trainer.pop(key)
    if get(cfg, "estimate.check") not in (None, "false", False):
        _set(cfg, "estimate.check", "auto")  # checked against the card only when the trainer is on a GPU


# --- the record --------------------------------------------------------------------------------------------
def mark_run(run_dir: Path, cfg: DictConfig) -> None:
    """run_info.json and results.json say this was a rehearsal; results.md opens with the caption."""
    if not enabled(cfg):
        return
    record = {"name": str(cfg.rehearsal.name), "notes": list(get(cfg, "rehearsal.notes") or []),
              "datasets": list(get(cfg, "rehearsal.datasets") or []), "caption": caption(cfg),
              "replaced": OmegaConf.to_container(cfg.rehearsal.replaced) if get(cfg, "rehearsal.replaced") else {}}
    for table in Path(run_dir).rglob("*.md"):
        text = table.read_text()
        if not text.startswith("REHEARSAL"):
            table.write_text(f"{caption(cfg)}\n\n{text}")
    for file in ("run_info.json", "results.json"):  # results.json last: it is the run's completion marker
        path = Path(run_dir) / file
        if path.is_file():
            data = json.loads(path.read_text())
            data["rehearsal"] = record if file == "run_info.json" else record["name"]
            write_json(path, data)

