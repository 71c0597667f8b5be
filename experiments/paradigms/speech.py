"""The speech paradigm: a frozen Whisper encoder probed SUPERB-style, layer by layer, under corruptions.

``run`` overrides the default pipeline:

1. the datamodule builds the feature cache once (``data/speech.py``): one encoder pass per utterance and
   condition (training split clean or ``corruption.train_condition``, validation and test under every
   condition of ``corruption.conditions``); a later run with the same audio, encoder and settings reuses it;
2. one probe (``modules/probe_module.py``: featurizer + head, Adam) is fitted per setting of
   ``probe.layers`` (``all`` = the weighted sum and every hidden state 0..L), validated and tested under
   every condition. Each probe has its own folder
   (``probes/<weighted|layer_<i>>/``: checkpoints, ``metrics.json``); a rerun on the run folder skips the
   finished probes and continues an unfinished one from its last checkpoint;
3. ``results.json`` holds every (layer, condition) metric, ``test/acc@condition=<c>,layer=<i>``, where the
   layer axis is an integer and **``layer=-1`` is the weighted sum** (conditions are strings, as every
   evaluation condition of the spine), the learned weights of the weighted sum (``weights/layer_<i>``), the
   best layer setting per condition, chosen on that condition's validation accuracy and reported with its
   test accuracy (``best/submodel@condition=<c>``, ``best/val/acc@...``, ``best/test/acc@...``); the run
   returns ``best/val/acc`` under the first condition (a search's objective); and the cache's counts
   (``cache/encoder_passes``: utterances encoded by this run; 0 when the cache was complete);
   ``probes.md``/``.csv`` (layer x condition accuracy) and three PNGs: ``accuracy_per_layer.png``,
   ``accuracy_per_condition.png``, ``layer_weights.png``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import ConfigError, plain
from experiments.core.schema import CheckpointSchema, EvalSchema, TrainerSchema, options, opt
from experiments.paradigms.base import Paradigm

WEIGHTED = -1  # the layer axis of the weighted-sum probe (modules/probe_module.py)
# encoder layers of the OpenAI checkpoints, so probe.layers is checked before a download
KNOWN_ENCODER_LAYERS = {"tiny": 4, "base": 6, "small": 12, "medium": 24, "large": 32}


# --- schemas of the speech groups -----------------------------------------------------------------
@dataclasses.dataclass
class ModelSchema:
    yaml: ClassVar[str] = "model/whisper_tiny_en"
    closed: ClassVar[bool] = True
    name_or_path: str = "whisper-tiny.en"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    encoder_layers: Optional[int] = opt(4, min=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclasses.dataclass
class DataSchema:
    yaml: ClassVar[str] = "data/keywords_synth"
    closed: ClassVar[bool] = True
    task: str = "keywords"
    root: Optional[str] = None
    fold: int = opt(1, min=1, max=5)
    batch_size: int = opt(32, min=1)
    eval_batch_size: int = opt(64, min=1)
    limit_train: Optional[int] = opt(None, min=1)
    limit_eval: Optional[int] = opt(None, min=1)
    encode_batch_size: int = opt(16, min=1)
    cache_dir: Optional[str] = None
    num_workers: int = opt(0, min=0)


@dataclasses.dataclass
class CorruptionSchema:
    yaml: ClassVar[str] = "corruption/none"
    closed: ClassVar[bool] = True
    conditions: list[str] = dataclasses.field(default_factory=lambda: ["clean"])
    train_condition: str = "clean"
    seed: int = 0
    noise_dir: Optional[str] = None
    rir_dir: Optional[str] = None
    babble_talkers: int = opt(5, min=1)
    babble_pool: int = opt(200, min=2)


@dataclasses.dataclass
class ProbeSchema:
    yaml: ClassVar[str] = "probe/default"
    closed: ClassVar[bool] = True
    layers: Union[str, list[Union[int, str]]] = "all"
    head: Literal["auto", "mean_pool", "intent"] = "auto"
    hidden_dim: int = opt(256, min=1)
    layer_norm: bool = False
    pad_to_30s: bool = True


# --- reading the config --------------------------------------------------------------------------
def encoder_layers(cfg: DictConfig) -> int | None:
    """L (encoder layers) when known without loading: model.encoder_layers, a local config.json, an
    offline alias or an openai/whisper-<size> id; None otherwise (checked once loaded)."""
    model = options(cfg, "model", ModelSchema)
    stated = model.encoder_layers
    if stated:
        return int(stated)
    name = str(model.name_or_path)
    config = Path(name).expanduser() / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("encoder_layers", 0)) or None
    size = name.rsplit("/", 1)[-1].removeprefix("whisper-").split(".")[0].split("-")[0]
    return KNOWN_ENCODER_LAYERS.get(size)


def probe_layers(cfg: DictConfig, num_layers: int | None) -> list[int]:
    """``probe.layers`` -> layer-axis values (-1 = weighted sum, then 0..L), in order, without repeats."""
    spec = options(cfg, "probe", ProbeSchema).layers
    if spec == "all":
        if num_layers is None:
            return [WEIGHTED]  # expanded once the encoder is loaded
        spec = ["weighted", *range(num_layers + 1)]
    if isinstance(spec, str) or not isinstance(spec, list) or not spec:
        raise ConfigError(f"probe.layers={spec!r}: give all, or a list of weighted and hidden-state indices "
                          "(0 = embeddings .. L = top layer), e.g. [weighted, 0, 2, 4]")
    out: list[int] = []
    for item in spec:
        if item == "weighted":
            value = WEIGHTED
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            value = item
        else:
            raise ConfigError(f"probe.layers: {item!r} is not weighted or a hidden-state index >= 0")
        if num_layers is not None and value > num_layers:
            raise ConfigError(f"probe.layers: layer {value} does not exist; "
                              f"{options(cfg, 'model', ModelSchema).name_or_path} has "
                              f"hidden states 0..{num_layers} (0 = embeddings)")
        if value not in out:
            out.append(value)
    return out


def head_of(cfg: DictConfig) -> str:
    from data.speech_tasks import INTENT_TASKS

    head, task = options(cfg, "probe", ProbeSchema).head, options(cfg, "data", DataSchema).task
    wanted = "intent" if task in INTENT_TASKS else "mean_pool"
    if head == "auto":
        return wanted
    if head != wanted:
        raise ConfigError(f"probe.head={head} does not fit data.task={task} (it needs head={wanted}, or auto)")
    return head


def layer_tag(layer: int) -> str:
    return "weighted" if layer == WEIGHTED else f"layer_{layer}"


def encode_device(cfg: DictConfig) -> str:
    """Where the frozen encoder runs while the cache is built: ``model.device`` (auto = the GPU when the
    trainer uses one and it is present)."""
    import torch

    want = options(cfg, "model", ModelSchema).device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()
                          and options(cfg, "trainer", TrainerSchema).accelerator in ("gpu", "cuda", "auto")):
        return "cuda"
    return "cpu"


def build_datamodule(cfg: DictConfig):
    from data.speech import SpeechDataModule

    data = {k: v for k, v in plain(cfg.data).items() if k != "_target_"}
    corruption, model = options(cfg, "corruption", CorruptionSchema), options(cfg, "model", ModelSchema)
    return SpeechDataModule(**data, model=str(model.name_or_path), dtype=model.dtype,
                            pad_to_30s=options(cfg, "probe", ProbeSchema).pad_to_30s, encode_device=encode_device(cfg),
                            conditions=corruption.conditions, train_condition=corruption.train_condition,
                            corruption_seed=corruption.seed, noise_dir=corruption.noise_dir,
                            rir_dir=corruption.rir_dir, babble_talkers=corruption.babble_talkers,
                            babble_pool=corruption.babble_pool, seed=cfg.seed)


def _probe_cfg(cfg: DictConfig, tag: str) -> DictConfig:
    """The config one probe's Trainer is built from: its own logger version (csv/<tag>/metrics.csv)."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for node in (out.get("logger") or {}).values():
        if isinstance(node, DictConfig) and "version" in node:
            node.version = tag
    return out


# --- results: tables and plots -------------------------------------------------------------------
def accuracy_grid(metrics: dict[str, Any], metric: str = "test/acc") -> dict[int, dict[str, float]]:
    """{layer: {condition: value}} of ``metric``."""
    from modules.submodel import split_metric_key

    grid: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        name, cell = split_metric_key(key)
        if name == metric and "layer" in dict(cell.dims):
            grid.setdefault(int(cell["layer"]), {})[str(cell.get("condition", "clean"))] = float(value)
    return dict(sorted(grid.items()))


def probe_table(metrics: dict[str, Any], conditions: list[str]) -> tuple[list[str], list[list[Any]]]:
    test, val = accuracy_grid(metrics), accuracy_grid(metrics, "val/acc")
    header = ["layer", f"val/acc@{conditions[0]}", *[f"test/acc@{c}" for c in conditions]]
    rows = [["weighted" if layer == WEIGHTED else layer, val.get(layer, {}).get(conditions[0]),
             *[test[layer].get(c) for c in conditions]] for layer in test]
    return header, rows


def plot_probes(metrics: dict[str, Any], conditions: list[str], run_dir: Path, title: str) -> list[Path]:
    from experiments.results.files import pyplot

    plt = pyplot()

    grid = accuracy_grid(metrics)
    layers = list(grid)
    labels = ["W" if layer == WEIGHTED else str(layer) for layer in layers]
    written = []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for c in conditions:
        ax.plot(range(len(layers)), [grid[layer].get(c) for layer in layers], marker="o", label=c,
                lw=2.5 if c == "clean" else 1)
    ax.set_xticks(range(len(layers)), labels)
    ax.set_xlabel("layer (W = weighted sum of all)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy_per_layer.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "accuracy_per_layer.png")

    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(conditions) + 2), 3.6))
    for layer, label in zip(layers, labels):
        ax.plot(range(len(conditions)), [grid[layer].get(c) for c in conditions], marker="o",
                label="weighted" if layer == WEIGHTED else f"layer {label}", lw=2.5 if layer == WEIGHTED else 1)
    ax.set_xticks(range(len(conditions)), conditions, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy_per_condition.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "accuracy_per_condition.png")

    weights = sorted((int(k.split("_")[-1]), v) for k, v in metrics.items() if k.startswith("weights/layer_"))
    if weights:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar([w[0] for w in weights], [w[1] for w in weights])
        ax.axhline(1 / len(weights), color="grey", ls="--", lw=1, label="uniform (start)")
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.set_ylabel("softmax weight")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(run_dir / "layer_weights.png", dpi=110)
        plt.close(fig)
        written.append(run_dir / "layer_weights.png")
    return written


# --- the paradigm --------------------------------------------------------------------------------
class SpeechParadigm(Paradigm):
    name = "speech"

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {"model": ModelSchema, "data": DataSchema, "corruption": CorruptionSchema, "probe": ProbeSchema}

    def validate(self, cfg: DictConfig) -> None:
        from data.speech_tasks import SpeechDataError, check_task, parse_condition
        from modules.speech.corruption import ConditionError

        data, corruption = options(cfg, "data", DataSchema), options(cfg, "corruption", CorruptionSchema)
        try:
            check_task(data.task, data.root, folder=False)
            conditions = corruption.conditions
            if not conditions:
                raise ConfigError("corruption.conditions is empty; give at least [clean]")
            keys = []
            for text in conditions:
                try:
                    keys.append(parse_condition(text).key)
                except ConditionError as err:
                    raise ConfigError(f"corruption.conditions: {err}") from None
            if len(set(keys)) != len(keys):
                raise ConfigError(f"corruption.conditions names a condition twice: {conditions}")
            try:
                parse_condition(corruption.train_condition)
            except ConditionError as err:
                raise ConfigError(f"corruption.train_condition: {err}") from None
            for text in [*conditions, corruption.train_condition]:
                c = parse_condition(text)
                for need, key in (("file", "noise_dir"), ("rir", "rir_dir")):
                    uses = c.noise == "file" if need == "file" else c.rir == "file"
                    folder = getattr(corruption, key)
                    if uses and not (folder and Path(str(folder)).expanduser().is_dir()):
                        raise ConfigError(f"condition {text!r} reads audio files: "
                                          f"set corruption.{key}=<a folder of them>")
        except SpeechDataError as err:
            raise ConfigError(str(err)) from None
        name = str(options(cfg, "model", ModelSchema).name_or_path)
        looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
        if looks_local and not Path(name).expanduser().is_dir():
            raise ConfigError(f"model.name_or_path={name!r}: no such folder; give whisper-tiny.en (offline), an HF id "
                              "(openai/whisper-base ...) or a local Whisper folder")
        probe_layers(cfg, encoder_layers(cfg))
        head_of(cfg)

    def check_resources(self, cfg: DictConfig) -> None:
        """This machine has the corpus (``data.root`` set, there, not empty) and the encoder's device."""
        from data.speech_tasks import SpeechDataError, check_task

        data = options(cfg, "data", DataSchema)
        try:
            check_task(data.task, data.root)
        except SpeechDataError as err:
            raise ConfigError(str(err)) from None
        if options(cfg, "model", ModelSchema).device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("model.device=cuda but this machine has no CUDA device; valid choices here: auto, cpu")

    def evaluate_checkpoint(self, ctx) -> float | None:
        raise ConfigError("task=eval: a speech run trains one probe per layer; rerun task=train with "
                          "hydra.run.dir=<the run> (finished probes are kept, results are rewritten)")

    # --- the run ------------------------------------------------------------------------------
    def run(self, ctx) -> float | None:
        import lightning.pytorch as pl

        from experiments.results.wandb_log import finish_wandb
        from experiments.results.files import (best_line, markdown_table, objective_key, summarize, write_csv,
                                               write_results, write_run_info)

        cfg = ctx.cfg
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = build_datamodule(cfg)
        write_run_info(ctx.run_dir, cfg.seed, ctx.overrides)
        ctx.remember_config()
        stats = datamodule.prepare_cache()
        print(f"feature cache: {stats['cache/encoder_passes']} encoder passes for "
              f"{stats['cache/utterance_conditions']} (utterance, condition) pairs, "
              f"{stats['cache/shards_reused']} shards reused, {stats['cache/seconds']:.1f} s "
              f"({datamodule.cache_folder()})")
        (ctx.run_dir / "cache.json").write_text(json.dumps({**stats, "passes": datamodule.passes}, indent=2) + "\n")
        layers = probe_layers(cfg, datamodule.num_layers - 1)
        metrics: dict[str, Any] = dict(stats)
        trainer = None
        start = time.perf_counter()
        for layer in layers:
            out, trainer = self.fit_probe(ctx, datamodule, layer)
            metrics.update(out)
        metrics["time/probes_s"] = time.perf_counter() - start
        evaluation = options(cfg, "eval", EvalSchema)
        summary = summarize(metrics, evaluation.metric, bool(evaluation.higher_is_better))
        metrics.update({k: v for k, v in summary.items() if not k.startswith("auc/")})  # no area over layer indices
        conditions = [c.key for c in datamodule.conditions]
        write_results(ctx.run_dir, metrics, ())
        header, rows = probe_table(metrics, conditions)
        table = markdown_table(header, rows)
        (ctx.run_dir / "probes.md").write_text(table + "\n")
        write_csv(ctx.run_dir / "probes.csv", header, rows)
        title = f"{options(cfg, 'model', ModelSchema).name_or_path} on {options(cfg, 'data', DataSchema).task}"
        plots = plot_probes(metrics, conditions, ctx.run_dir, title)
        print(f"\nAccuracy per layer (rows; W = weighted sum = layer=-1) and condition ({ctx.run_dir}):\n{table}")
        for c in conditions:
            print(best_line(metrics, evaluation.metric, f"@condition={c}"))
        weights = [metrics[k] for k in sorted((k for k in metrics if k.startswith("weights/layer_")),
                                              key=lambda k: int(k.split("_")[-1]))]
        if weights:
            print("learned layer weights (0 = embeddings):", " ".join(f"{w:.3f}" for w in weights))
        for path in plots:
            print(f"plot: {path}")
        if trainer is not None:
            finish_wandb(trainer, metrics)
        return metrics.get(f"{objective_key(evaluation.metric)}@condition={conditions[0]}")  # the first condition

    def fit_probe(self, ctx, datamodule, layer: int) -> tuple[dict[str, Any], Any]:
        """One probe: fit (continuing from its folder's last checkpoint), validate, test every condition."""
        import lightning.pytorch as pl

        from experiments.core.callbacks import PeakMemory
        from experiments.core.config import instantiate
        from experiments.core.runtime import CHECKPOINT_DIR, LAST, build_trainer
        from experiments.results.files import write_json
        from modules.probe_module import SpeechProbe

        cfg, tag = ctx.cfg, layer_tag(layer)
        folder = ctx.run_dir / "probes" / tag
        done = folder / "metrics.json"
        resume = options(cfg, "checkpoint", CheckpointSchema).resume
        if resume and done.is_file():
            print(f"probe {tag}: finished earlier, kept ({done})")
            return json.loads(done.read_text()), None
        folder.mkdir(parents=True, exist_ok=True)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # every probe starts alike, in any order
        probe = options(cfg, "probe", ProbeSchema)
        module = SpeechProbe(datamodule.num_layers, datamodule.hidden_size, datamodule.num_classes,
                             layer="weighted" if layer == WEIGHTED else layer, head=head_of(cfg),
                             hidden_dim=probe.hidden_dim, layer_norm=probe.layer_norm,
                             optimizer=instantiate(cfg.optimizer), scheduler=plain(cfg.scheduler))
        datamodule.set_layer(module.probed_layer)  # a single-layer probe's batches carry its layer only
        trainer = build_trainer(_probe_cfg(cfg, tag), folder)
        last = folder / CHECKPOINT_DIR / LAST
        ckpt = str(last) if resume and last.is_file() else None
        print(f"probe {tag}: {'resuming from ' + ckpt if ckpt else 'training'}")
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        fit_s = time.perf_counter() - start
        trainer.validate(module, datamodule=datamodule, verbose=False)
        out: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
        trainer.test(module, datamodule=datamodule, verbose=False)
        out.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        out = {k: v for k, v in out.items() if not k.startswith("train/")}
        out[f"time/fit_s@layer={layer}"] = fit_s
        if layer == WEIGHTED:
            out.update({f"weights/layer_{i}": w for i, w in enumerate(module.layer_weights())})
        for callback in trainer.callbacks:
            if isinstance(callback, PeakMemory):
                out.update({f"{k}@layer={layer}": v for k, v in callback.peaks.items() if isinstance(v, (int, float))})
        write_json(done, out)
        return out, trainer
