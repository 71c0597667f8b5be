"""The text-classification paradigm (GLUE; KronA first): its groups' schemas, checks, building, costs.

An HF ``AutoModelForSequenceClassification`` (BERT / RoBERTa / MiniLM / T5 through its classification head)
with an adapter attached to its backbone through the adapter contract (``adapter=krona|lora|dylora|none``);
the classification head is new and always trains (as PEFT's ``modules_to_save`` for sequence
classification). The nested space is the adapter's axes (``kron_rank``, ``rank``); the evaluation grid is
their evaluated values. Data: ``data/glue.py`` (GLUE's validation set is our test split).

After the grid evaluation ``results.json`` gets the parameter counts (``params/trainable_pct``: trainable
over all parameters, head included; ``params/adapter_pct``: without the head) and the measured inference
latency of one batch through the adapted model (``latency/ms``, adapter unmerged, the largest sub-model)
against the base model without any adapter, loaded again (``latency/base_ms``, ``latency/relative``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import ConfigError, instantiate
from experiments.core.runtime import latency_device
from experiments.core import schema
from experiments.core.schema import LatencySchema, opt, options
from experiments.paradigms.base import Paradigm
from experiments.paradigms.lm import (QuantizationSchema, adapter_of, adapter_options, check_model_path, eval_grid,
                                     training_sampler)


# --- the schemas of its groups --------------------------------------------------------------------
@dataclasses.dataclass
class ModelSchema:
    yaml: ClassVar[str] = "model/minilm"
    elsewhere: ClassVar[dict] = {"gradient_checkpointing": "model/distilgpt2", "attn_implementation": "model/distilgpt2",
                                 "ffn_blocks": "model/t5_base", "random_config": "model/tiny_bert"}  # fields only those models set
    closed: ClassVar[bool] = True
    name_or_path: str = "all-minilm-l6-v2"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False   # in the decoder model files (GPT-2 for KnGPT2's GLUE stage): not read here
    attn_implementation: Optional[str] = None  # the same
    lora_targets: Union[list[str], str] = opt(["query", "value"], min_len=1)  # the adapters' target_modules: [] would wrap nothing
    ffn_blocks: Optional[list[str]] = opt(None, min_len=1)  # leaf names of whole FFN blocks (KronA^B wraps them); null: none
    random_config: Optional[dict] = None


@dataclasses.dataclass
class DataSchema:
    yaml: ClassVar[str] = "data/glue_sst2"
    closed: ClassVar[bool] = True
    task: str = "sst2"
    source: str = "hf"
    hf_id: str = "nyu-mll/glue"
    metric: str = "acc"
    max_length: int = opt(128, min=1)
    batch_size: int = opt(32, min=1)
    eval_batch_size: int = opt(64, min=1)
    val_size: Union[int, float] = opt(0.05, min=0)
    split_seed: int = 0
    limit_train: Optional[int] = opt(None, min=1)
    limit_val: Optional[int] = opt(2000, min=1)
    limit_test: Optional[int] = opt(None, min=1)
    num_workers: int = opt(0, min=0)


@dataclasses.dataclass
class EvalSchema(schema.EvalSchema):
    yaml: ClassVar[str] = "eval/glue"
    closed: ClassVar[bool] = True  # the core keys only
    higher_is_better: bool = True


@dataclasses.dataclass
class ExportSchema(schema.ExportSchema):
    yaml: ClassVar[str] = "export/glue"
    closed: ClassVar[bool] = True
    merge: bool = False  # save the trained model with the adapter merged, as a plain HF folder (exports/merged)


# --- validation -------------------------------------------------------------------------------------
def task_of(cfg: DictConfig):
    from data.glue import get_task

    try:
        return get_task(str(options(cfg, "data", DataSchema).task))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate(cfg: DictConfig) -> None:
    from data.glue import BUILTIN, SOURCES
    from modules.adapters import AdapterError

    adapter = adapter_of(cfg)
    quantized = bool(options(cfg, "quantization", QuantizationSchema).enabled)
    export = options(cfg, "export", ExportSchema)
    try:
        adapter.check(adapter_options(cfg), quantized=quantized)
        if export.merge:
            adapter.check_merge(adapter_options(cfg))
    except AdapterError as err:
        raise ConfigError(str(err)) from None
    if export.merge and quantized:
        raise ConfigError("export.merge=true on a 4-bit base: merging would write the adapter into quantized "
                          "weights; use quantization=none to export a merged model")
    training_sampler(cfg, adapter.axes(adapter_options(cfg)))
    task = task_of(cfg)
    source = str(options(cfg, "data", DataSchema).source)
    if source == "builtin" and task.name not in BUILTIN:
        raise ConfigError(f"data.source=builtin but data.task={task.name!r} is not built offline; built-in tasks: "
                          f"{', '.join(sorted(BUILTIN))} (GLUE tasks: data.source=hf or a local folder)")
    if source not in SOURCES and not Path(source).expanduser().is_dir():
        raise ConfigError(f"data.source={source!r}: no such folder; valid choices: {', '.join(SOURCES)} or a "
                          "local folder with GLUE's train/validation .tsv|.csv files")
    metric = str(options(cfg, "eval", EvalSchema).metric)
    split, _, name = metric.partition("/")
    if split not in ("val", "test") or name not in ("loss", *task.metrics):
        raise ConfigError(f"eval.metric={metric!r} is not measured for data.task={task.name}; valid choices: "
                          + ", ".join(f"{s}/{n}" for s in ("test", "val") for n in (*task.metrics, "loss")))
    device = options(cfg, "latency", LatencySchema).device
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("latency.device=cuda but no CUDA device is available; valid choices here: auto, cpu")
    for choice in export.submodels or []:
        raise ConfigError(f"export.submodels: {choice!r}: the GLUE paradigm exports the largest sub-model only "
                          "(export.merge=true); use export.submodels=[]")
    check_model_path(str(options(cfg, "model", ModelSchema).name_or_path))


# --- building ---------------------------------------------------------------------------------------
def load_model(cfg: DictConfig, num_labels: int):
    from modules.hf_model import load_sequence_classifier
    from modules.offline import OfflineModelError

    m = options(cfg, "model", ModelSchema)
    random_config = m.random_config or None
    quantized = options(cfg, "quantization", QuantizationSchema).enabled
    try:
        quant = instantiate(cfg.quantization.config) if quantized else None
        return load_sequence_classifier(str(m.name_or_path), num_labels, m.dtype, random_config, quant)
    except OfflineModelError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:  # not on the hub / not cached offline / not a model folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.name_or_path={m.name_or_path!r} could not be loaded: {first}") from None


def head_parameters(model) -> list:
    """Parameters outside the backbone (the classification head: ``classifier``, ``classification_head``)."""
    backbone = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in backbone]


def build(cfg: DictConfig):
    from modules.adapters import AdapterError
    from modules.classifier_module import NestedSequenceClassifier

    task = task_of(cfg)
    model, tokenizer = load_model(cfg, task.num_labels)
    adapter = adapter_of(cfg)
    try:  # the adapter sees the backbone only: it freezes that and wraps its layers; the head stays trainable
        nested = adapter.attach(model.base_model, adapter.attach_options(adapter_options(cfg)))
    except (AdapterError, ValueError, TypeError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    for p in head_parameters(model):
        p.requires_grad_(True)
    module = NestedSequenceClassifier(model, nested, training_sampler(cfg, nested.space.axes),
                                      optimizer=instantiate(cfg.optimizer),
                                      scheduler=OmegaConf.to_container(cfg.scheduler),
                                      eval_grid=eval_grid(cfg, nested), num_labels=task.num_labels,
                                      metrics=task.metrics)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed)
    return module, datamodule


# --- after the grid evaluation: parameters and latency -------------------------------------------------
def parameter_metrics(model) -> dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in head_parameters(model))
    return {"params/total": float(total), "params/trainable": float(trainable),
            "params/trainable_pct": 100.0 * trainable / total, "params/head": float(head),
            "params/adapter_pct": 100.0 * (trainable - head) / total}


def measure_latency_ms(model, batch: dict, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of one forward of ``batch`` (already on the model's device), in ms."""
    from modules.timing import median_ms

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return median_ms(lambda: model(**inputs), next(model.parameters()).device, warmup, repeats)


def latency_metrics(cfg: DictConfig, module, datamodule) -> dict[str, Any]:
    """``latency/ms`` (adapted, largest sub-model), ``latency/base_ms`` (the base model, no adapter),
    ``latency/relative``: one forward of the same batch (the first ``latency.batch_size`` test rows)."""
    latency = options(cfg, "latency", LatencySchema)
    repeats, warmup = latency.repeats, latency.warmup
    if repeats <= 0:
        return {}
    datamodule.setup("test")
    rows = datamodule.test_sets[0][: latency.batch_size]
    device = latency_device(cfg)
    batch = {k: v.to(device) for k, v in datamodule.collate(rows).items()}
    base, _ = load_model(cfg, datamodule.num_labels)
    model = module.model
    was_training, old_device = model.training, next(model.parameters()).device
    module.nested.apply(module.nested.space.largest)
    try:
        model.eval().to(device)
        base.eval().to(device)
        adapted_ms = measure_latency_ms(model, batch, warmup, repeats)
        base_ms = measure_latency_ms(base, batch, warmup, repeats)
    finally:
        model.to(old_device).train(was_training)
        del base
    return {"latency/ms": adapted_ms, "latency/base_ms": base_ms, "latency/relative": adapted_ms / base_ms,
            "latency/batch_size": float(len(rows)), "latency/device": str(device)}


class GlueParadigm(Paradigm):
    name = "glue"
    PLOT_METRICS = ("test/acc", "test/loss")

    def __init__(self):
        self._datamodule = None

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {"model": ModelSchema, "data": DataSchema, "eval": EvalSchema, "export": ExportSchema,
                "latency": LatencySchema, "quantization": QuantizationSchema,
                "adapter": adapter_of(cfg).options_schema}

    def validate(self, cfg: DictConfig) -> None:
        validate(cfg)

    def build(self, cfg: DictConfig):
        module, self._datamodule = build(cfg)
        return module, self._datamodule

    def after_eval(self, cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
        adapter, export = adapter_of(cfg), options(cfg, "export", ExportSchema)
        metrics.update(parameter_metrics(module.model))
        metrics["adapter"] = str(options(cfg, "adapter", adapter.options_schema).kind)
        metrics["task"] = str(options(cfg, "data", DataSchema).task)
        if self._datamodule is not None:
            metrics.update(latency_metrics(cfg, module, self._datamodule))
        if not export.merge:
            return []
        module.nested.apply(module.nested.space.largest)  # the merged model is the largest sub-model
        tokenizer = self._datamodule.tokenizer if self._datamodule is not None else None
        return adapter.export(module.model, module.nested.space.largest, run_dir / export.dir,
                              adapter_options(cfg), base_name=str(options(cfg, "model", ModelSchema).name_or_path),
                              merge=True, tokenizer=tokenizer)
