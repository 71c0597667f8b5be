"""KnGPT2: a compressed student (Kronecker factors, or fewer dense layers) distilled from its dense teacher.

Two paradigms on the LM and GLUE ones, sharing the ``compression`` group (modules/compression.py) and the
``distill`` group (ILKD weights, temperature, attention switch, teacher; modules/ilkd.py):
- ``distill_lm``: causal LM on a text corpus (data/lm_text.py), stage 1 (pre-training on a corpus slice) and
  stage 2 (fine-tuning, ``init_from=<stage 1 run>``) alike; metric ``test/ppl`` under one strided protocol;
- ``distill_glue``: GLUE sequence classification through the GLUE paradigm's data, metrics and latency.
The student is the model group's model, compressed after loading; the teacher is, by default, a frozen copy
of that model before compression (``distill.teacher`` names another), loaded only when a distillation
weight is positive. ``results.json`` gets the parameter counts of student and dense model and the
compression ratios (``compression/ratio``: dense / student distinct parameters).

Checked before anything loads (on a meta-device copy of the architecture, from its config alone): every
selected block and target exists, factor shapes divide every selected map, the truncated depth exists, and
the teacher's vocabulary is the student's.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import ConfigError, instantiate
from experiments.core.schema import TrainerSchema, opt, options
from experiments.paradigms import glue
from experiments.paradigms.lm import (LMParadigm, ModelSchema, QuantizationSchema, adapter_of, architecture_config,
                                      build_lm, eval_grid, training_sampler)


@dataclasses.dataclass
class CompressionSchema:
    yaml: ClassVar[str] = "compression/kronecker"
    closed: ClassVar[bool] = True
    kind: Literal["kronecker", "truncate", "none"] = "kronecker"
    layers: Union[Literal["odd", "even", "all", "none"], list[int]] = opt("odd", min=0, min_len=1)  # none, not []
    embedding: bool = True
    targets: Optional[list[str]] = opt(None, min_len=1)  # null = every linear map of a block
    a_shape: Optional[list[int]] = opt([2, 1], length=2, min=1)
    b_shape: Optional[list[int]] = opt(None, length=2, min=1)
    factor: int = -1
    rank: int = opt(1, min=1)
    embedding_factor: int = opt(2, min=1)
    embedding_rank: int = opt(1, min=1)
    init: Literal["nearest", "random"] = "nearest"
    fused: Optional[dict] = opt({"c_attn": 3})
    num_layers: Optional[int] = opt(None, min=1)


@dataclasses.dataclass
class DistillSchema:
    yaml: ClassVar[str] = "distill/ilkd"
    closed: ClassVar[bool] = True
    teacher: Optional[str] = None
    teacher_random_config: Optional[dict] = None
    teacher_init_from: Optional[str] = None
    task_weight: float = opt(1.0, min=0)
    logit_weight: float = opt(1.0, min=0)
    hidden_weight: float = opt(1.0, min=0)
    attention_weight: float = opt(1.0, min=0)
    embedding_weight: float = opt(1.0, min=0)
    temperature: float = opt(2.0, above=0)
    attention_loss: Literal["mse_scores", "kl_probs"] = "mse_scores"
    normalize: bool = False
    layer_map: Optional[list[int]] = opt(None, min=0, min_len=1)  # against the block counts: check_layer_map


@dataclasses.dataclass
class TextDataSchema:
    yaml: ClassVar[str] = "data/pydoc_text"
    closed: ClassVar[bool] = True
    source: Literal["pydoc", "hf"] = "pydoc"
    hf_id: Optional[str] = None
    hf_config: Optional[str] = None
    text_column: str = "text"
    splits: Optional[dict] = None
    block_size: int = opt(128, min=2)
    eval_context: int = opt(128, min=2)
    eval_stride: int = opt(64, min=1)
    batch_size: int = opt(8, min=1)
    eval_batch_size: int = opt(8, min=1)
    limit_train: Optional[int] = opt(None, min=1)
    limit_val: Optional[int] = opt(None, min=1)
    limit_test: Optional[int] = opt(None, min=1)
    num_workers: int = opt(0, min=0)


# --- config -> pieces ------------------------------------------------------------------------------
def compression_options(cfg: DictConfig) -> dict[str, Any]:
    group = OmegaConf.to_container(cfg.compression, resolve=True)
    return {k: v for k, v in group.items() if not (k == "fused" and v is None)}


def model_options(cfg: DictConfig) -> ModelSchema:
    """The model group as the checks both distill paradigms share read it (``name_or_path``, ``random_config``):
    through the LM's schema, also for distill_glue (the GLUE schema has both fields; random_config's default is
    null in both, and every model preset sets name_or_path)."""
    return options(cfg, "model", ModelSchema)


def ilkd_weights(cfg: DictConfig):
    from modules.ilkd import ILKDWeights

    d = options(cfg, "distill", DistillSchema)
    return ILKDWeights(task=d.task_weight, logits=d.logit_weight, hidden=d.hidden_weight,
                       attention=d.attention_weight, embedding=d.embedding_weight, temperature=d.temperature,
                       attention_loss=d.attention_loss, normalize=bool(d.normalize))


def teacher_spec(cfg: DictConfig) -> tuple[str, dict | None, str]:
    """(name_or_path, random config, the key it came from) of the teacher."""
    distill = options(cfg, "distill", DistillSchema)
    if distill.teacher:
        return str(distill.teacher), distill.teacher_random_config or None, "distill.teacher"
    model = model_options(cfg)
    return str(model.name_or_path), model.random_config or None, "model.name_or_path"


def check_student_and_teacher(cfg: DictConfig, sequence_classification: bool = False) -> None:
    from modules.compression import CompressionError, decoder_blocks, meta_copy, plan_compression

    model_opts = model_options(cfg)
    config = architecture_config(str(model_opts.name_or_path), model_opts.random_config or None)
    n_blocks = student_blocks = None  # the dense model's blocks, the student's after compression (None: unknown)
    if config is not None:
        if sequence_classification:
            config.num_labels = max(glue.task_of(cfg).num_labels, 1)
        model = meta_copy(config, sequence_classification)
        try:
            plan_compression(model, compression_options(cfg))
        except CompressionError as err:
            raise ConfigError(str(err)) from None
        n_blocks = len(decoder_blocks(model)[1])
        compression = options(cfg, "compression", CompressionSchema)
        n = compression.num_layers
        if compression.kind == "truncate" and n is not None and n > n_blocks:
            raise ConfigError(f"compression.num_layers={n} is more than the model's {n_blocks} blocks; valid: 1..{n_blocks}")
        student_blocks = n if compression.kind == "truncate" else n_blocks  # truncate's null depth: found once loaded
    if not ilkd_weights(cfg).needs_teacher:
        return
    name, teacher_random, key = teacher_spec(cfg)
    teacher_blocks = n_blocks  # the teacher is the dense model itself
    if key == "distill.teacher":
        teacher = architecture_config(name, teacher_random)
        teacher_blocks = getattr(teacher, "num_hidden_layers", None)
        if config is not None and teacher is not None and teacher.vocab_size != config.vocab_size:
            raise ConfigError(f"distill.teacher={name!r} has a vocabulary of {teacher.vocab_size} tokens but the student "
                              f"({model_opts.name_or_path}) has {config.vocab_size}; the logit and embedding "
                              f"terms need the same tokenizer: give a teacher of the student's family")
    check_layer_map(cfg, student_blocks, teacher_blocks)


def check_layer_map(cfg: DictConfig, student_blocks: int | None, teacher_blocks: int | None) -> None:
    """``distill.layer_map``: one teacher block per student block, each a block of the teacher (the ILKD terms pair
    them up with zip: a short map would silently leave student blocks out). A count not known yet is skipped."""
    layer_map = options(cfg, "distill", DistillSchema).layer_map
    if layer_map is None:
        return
    if student_blocks is not None and len(layer_map) != student_blocks:
        raise ConfigError(f"distill.layer_map={list(layer_map)} has {len(layer_map)} entries but the student has "
                          f"{student_blocks} blocks; give one teacher block (0..{(teacher_blocks or student_blocks) - 1}) "
                          "per student block, or null")
    for i, block in enumerate(layer_map):
        if teacher_blocks is not None and block >= teacher_blocks:
            raise ConfigError(f"distill.layer_map[{i}]={block} is not a block of the teacher; valid: "
                              f"0..{teacher_blocks - 1}")


def check_adapter(cfg: DictConfig) -> None:
    kind = adapter_of(cfg).kind
    if kind != "none" or options(cfg, "quantization", QuantizationSchema).enabled:
        raise ConfigError(f"adapter.kind={kind!r}: a compressed student trains all its weights; "
                          "use adapter=none (and quantization=none)")


def compress_student(cfg: DictConfig, model) -> tuple[list[int] | None, dict[str, float]]:
    """Compress ``model`` in place from the ``compression`` group; (layer map or None, metrics)."""
    from modules.compression import (Compression, CompressionError, approximation_errors, compress,
                                     compression_metrics, decoder_blocks, layers_matching, parameter_counts,
                                     plan_compression, spread, truncate_layers)

    dense = parameter_counts(model)
    opts = Compression.of(compression_options(cfg))
    layer_map = None
    try:
        if opts.kind == "kronecker":
            compress(model, opts)
        elif opts.kind == "truncate":
            n_blocks = len(decoder_blocks(model)[1])
            k = opts.num_layers
            if k is None:  # the depth whose size is closest to the Kronecker student of the other options
                saved = sum(s.dense_params - s.kron_params
                            for s in plan_compression(model, dataclasses.replace(opts, kind="kronecker")))
                k = layers_matching(model, int(dense["params/total"] - saved))
            layer_map = truncate_layers(model, spread(n_blocks, k))
    except CompressionError as err:
        raise ConfigError(str(err)) from None
    metrics = compression_metrics(model, dense)
    metrics.update(approximation_errors(model))
    if layer_map is not None:
        metrics["compression/num_layers"] = float(len(layer_map))
    return layer_map, metrics


def load_teacher(cfg: DictConfig, dense_copy, loader, student_vocab: int):
    """The frozen teacher: the dense model before compression, or ``distill.teacher`` (with
    ``distill.teacher_init_from``: the trained weights of an earlier run of that model, e.g. a fine-tuned one)."""
    from experiments.core.runtime import checkpoint_of, read_checkpoint

    name, random_config, key = teacher_spec(cfg)
    teacher = dense_copy if key == "model.name_or_path" else loader(name, random_config)
    if teacher.config.vocab_size != student_vocab:  # a hub teacher validate could not read offline
        raise ConfigError(f"distill.teacher={name!r} has a vocabulary of {teacher.config.vocab_size} tokens but the "
                          f"student has {student_vocab}; the logit and embedding terms need the same tokenizer")
    source = options(cfg, "distill", DistillSchema).teacher_init_from
    if source:
        state = read_checkpoint(checkpoint_of(source, "distill.teacher_init_from"), "distill.teacher_init_from")
        weights = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
        missing = teacher.load_state_dict(weights, strict=False)
        if len(missing.missing_keys) == len(teacher.state_dict()):
            raise ConfigError(f"distill.teacher_init_from={source!r} holds no weight of the teacher")
    return teacher


def layer_map_of(cfg: DictConfig, student, teacher, layer_map: list[int] | None) -> list[int] | None:
    from modules.compression import decoder_blocks, spread

    configured = options(cfg, "distill", DistillSchema).layer_map
    if configured:
        return list(configured)
    if layer_map is not None or teacher is None:
        return layer_map
    return spread(len(decoder_blocks(teacher)[1]), len(decoder_blocks(student)[1]))


class DistillLMParadigm(LMParadigm):
    name = "distill_lm"
    PLOT_METRICS = ("test/ppl", "test/loss")

    def __init__(self):
        self.compression_metrics: dict[str, float] = {}

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {**super().schemas(cfg), "data": TextDataSchema, "compression": CompressionSchema,
                "distill": DistillSchema}

    def validate(self, cfg: DictConfig) -> None:
        check_adapter(cfg)
        super().validate(cfg)
        check_student_and_teacher(cfg)

    def check_resources(self, cfg: DictConfig) -> None:
        pass  # the GPU memory estimate models adapters on a frozen base, not full training of a student

    def build(self, cfg: DictConfig):
        from modules.distill_module import DistillCausalLM
        from modules.hf_model import load_causal_lm

        model, tokenizer, nested = build_lm(cfg)
        weights = ilkd_weights(cfg)
        own_teacher = options(cfg, "distill", DistillSchema).teacher
        dense = copy.deepcopy(model) if weights.needs_teacher and not own_teacher else None
        layer_map, self.compression_metrics = compress_student(cfg, model)
        teacher = None
        if weights.needs_teacher:
            m = options(cfg, "model", ModelSchema)
            teacher = load_teacher(cfg, dense, lambda name, rc: load_causal_lm(
                name, m.dtype, attn_implementation=m.attn_implementation, random_config=rc)[0],
                model.config.vocab_size)
        module = DistillCausalLM(model, tokenizer, nested, training_sampler(cfg, nested.space.axes),
                                 optimizer=instantiate(cfg.optimizer), scheduler=OmegaConf.to_container(cfg.scheduler),
                                 eval_grid=eval_grid(cfg, nested), generate=False, teacher=teacher, ilkd=weights,
                                 layer_map=layer_map_of(cfg, model, teacher, layer_map))
        return module, instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed)

    def after_eval(self, cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
        metrics.update(self.compression_metrics)
        data = options(cfg, "data", TextDataSchema)
        fine_tuned = options(cfg, "trainer", TrainerSchema).max_steps
        metrics["protocol"] = (f"context={data.eval_context},stride={data.eval_stride},"
                               f"{'fine-tuned' if fine_tuned else 'zero-shot'}")
        return []


class DistillGlueParadigm(glue.GlueParadigm):
    name = "distill_glue"

    def __init__(self):
        super().__init__()
        self.compression_metrics: dict[str, float] = {}

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {**super().schemas(cfg), "compression": CompressionSchema, "distill": DistillSchema}

    def validate(self, cfg: DictConfig) -> None:
        check_adapter(cfg)
        super().validate(cfg)
        check_student_and_teacher(cfg, sequence_classification=True)

    def build(self, cfg: DictConfig):
        from modules.adapters import get_adapter
        from modules.distill_module import DistillSequenceClassifier

        task = glue.task_of(cfg)
        model, tokenizer = glue.load_model(cfg, task.num_labels)
        nested = get_adapter("none").attach(model, {})
        weights = ilkd_weights(cfg)
        own_teacher = options(cfg, "distill", DistillSchema).teacher
        dense = copy.deepcopy(model) if weights.needs_teacher and not own_teacher else None
        layer_map, self.compression_metrics = compress_student(cfg, model)
        teacher = None
        if weights.needs_teacher:
            dtype = options(cfg, "model", glue.ModelSchema).dtype

            def loader(name, rc):
                from modules.hf_model import load_sequence_classifier

                return load_sequence_classifier(name, task.num_labels, dtype, rc)[0]
            teacher = load_teacher(cfg, dense, loader, model.config.vocab_size)
        module = DistillSequenceClassifier(model, nested, training_sampler(cfg, nested.space.axes),
                                           optimizer=instantiate(cfg.optimizer),
                                           scheduler=OmegaConf.to_container(cfg.scheduler),
                                           eval_grid=eval_grid(cfg, nested), num_labels=task.num_labels,
                                           metrics=task.metrics, teacher=teacher, ilkd=weights,
                                           layer_map=layer_map_of(cfg, model, teacher, layer_map))
        self._datamodule = instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed)
        return module, self._datamodule

    def after_eval(self, cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
        out = super().after_eval(cfg, module, metrics, run_dir)
        metrics.update(self.compression_metrics)
        return out
