"""The image-classification paradigm (SortedNet on ViT): validate, build, and per-sub-network costs.

Three ways to train, chosen by ``nested.method`` so that one Hydra multirun compares them:

- ``sorted``: every optimizer step the ``sampling`` sampler (sandwich, uniform, all, ...) picks
  sub-networks of ``nested.axes``; each is trained on the batch and their losses are averaged.
- ``standard``: only the largest sub-network of ``nested.axes`` (the full model) is trained; the
  grid is then evaluated by slicing it ("standard training, then slice").
- a sub-network key such as ``"depth=1,width=16"``: an independently trained small model, a
  separate ViT of exactly that shape (``build_independent``), trained alone and evaluated under
  the same key as the sub-network it stands beside; ``nested.independent_init`` starts it from
  random weights (``random``) or from that slice of the loaded model (``slice``, for pretrained ViTs).

After the grid evaluation each evaluated sub-network gets ``params@<sub>``, ``macs@<sub>`` (one
image) and ``latency_ms@<sub>`` (measured) in ``results.json``, the fraction of the largest
evaluated sub-network's accuracy it keeps (``kept/test/acc@<sub>``), a table ``submodels.md``/``.csv``
and an accuracy-vs-MACs plot ``pareto.png``; ``export.submodels`` saves chosen sub-networks as
standalone ViTs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

import dataclasses
from typing import ClassVar, Literal, Optional, Union

from experiments.core.config import ConfigError, get, instantiate, plain, require_int
from experiments.core.runtime import latency_device
from experiments.core.schema import EvalSchema, ExportSchema, LatencySchema, TrainerSchema, options, opt
from experiments.paradigms.base import Paradigm
from experiments.results.pareto import METHODS, method_label
MODEL_KEYS_NOT_CONFIG = ("name_or_path",)  # model.* keys that are not SortedViTConfig fields
# Sizes a pretrained checkpoint fixes; model.* may state them so nested.axes is checked before a download.
CHECKPOINT_SIZES = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "intermediate_size")


# --- reading the config ---------------------------------------------------------------------
def method_of(cfg: DictConfig):
    """``"sorted"``, ``"standard"`` or the ``SubModel`` of an independently trained small model."""
    from modules.submodel import SubModel, SubModelError

    method = options(cfg, "nested", NestedSchema).method
    if method in METHODS:
        return method
    if isinstance(method, str) and "=" in method:
        try:
            return SubModel.parse(method)
        except SubModelError:
            pass
    raise ConfigError(f"nested.method={method!r} is not an option; valid choices: sorted, standard, or a "
                      "sub-network key such as 'depth=1,width=16' (an independently trained small model)")


def _data_shape(cfg: DictConfig) -> tuple[tuple[int, int, int] | None, int | None]:
    """(C, H, W) and classes of the configured data, when known without loading it."""
    from data.images import SOURCES

    data = options(cfg, "data", DataSchema)
    info = SOURCES[data.source]
    classes = info.num_classes if data.label_column in (None, info.label_column) else None
    if info.shape is None:
        return None, classes
    c, h, w = info.shape
    size = data.image_size
    return ((c, size, size) if size else (c, h, w)), classes


def model_config(cfg: DictConfig, image_shape: tuple[int, int, int] | None = None,
                 num_classes: int | None = None, hf_config: Any = None):
    """The ``SortedViTConfig`` the run builds; ``model.*`` nulls are taken from the data.

    With ``model.name_or_path`` the sizes are the checkpoint's: from ``hf_config`` (the loaded
    model's), from a local folder's config.json, or, for a hub id before anything is downloaded,
    from the sizes written in ``model.*`` (None when they are not all given: nothing to check yet).
    Sizes written in ``model.*`` must match the checkpoint's; ``num_labels`` replaces its head.
    """
    from modules.sorted_vit import SortedViTConfig

    given = {k: v for k, v in plain(cfg.model).items() if k not in MODEL_KEYS_NOT_CONFIG}
    name = options(cfg, "model", ModelSchema).name_or_path
    if name:
        labels = given.get("num_labels") or num_classes
        if hf_config is None and Path(str(name)).expanduser().exists():
            hf_config = load_hf_config(cfg)  # a local config.json: read, nothing downloaded
        if hf_config is not None:
            out = SortedViTConfig.from_hf(hf_config)
            for key in CHECKPOINT_SIZES:
                if given.get(key) is not None and given[key] != getattr(out, key):
                    raise ConfigError(f"model.{key}={given[key]} but {name} has {key}={getattr(out, key)}; "
                                      f"set model.{key}={getattr(out, key)} (or null to take the checkpoint's)")
        elif all(given.get(k) is not None for k in CHECKPOINT_SIZES):
            check_model_name(str(name))
            out = SortedViTConfig.from_mapping({k: given[k] for k in CHECKPOINT_SIZES})
        else:
            check_model_name(str(name))
            return None  # a hub id with its sizes unstated: checked once loaded
        if labels:
            out.num_labels = int(labels)
        return out
    shape = image_shape
    fill = {"num_channels": shape[0] if shape else 3, "image_size": shape[-1] if shape else None,
            "num_labels": num_classes or 2}
    for key, value in fill.items():
        if given.get(key) is None:
            given[key] = value
    if given.get("image_size") is None:  # data shape unknown before loading (data.source=hf)
        given["image_size"] = given.get("patch_size") or 1
    try:
        return SortedViTConfig.from_mapping(given)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def check_model_name(name: str) -> None:
    """A local-looking path must exist; a hub id is checked when loaded."""
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(f"model.name_or_path={name!r}: no such folder; give an HF id of a ViT "
                          "(e.g. google/vit-base-patch16-224), a local ViT folder, or null for a random ViT")


def load_hf_config(cfg: DictConfig):
    from transformers import ViTConfig

    name = str(options(cfg, "model", ModelSchema).name_or_path)
    check_model_name(name)
    try:
        return ViTConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.name_or_path={name!r} could not be loaded: {first}") from None


def axes_of(cfg: DictConfig, vit_cfg) -> dict[str, list[int]]:
    """``nested.axes`` checked against the model (``vit_cfg``; None: its form only): the space sorted
    training samples from."""
    from modules.sorted_vit import AXES, SubModelError, _describe, check_axis, valid_choices

    axes = options(cfg, "nested", NestedSchema).axes
    if not isinstance(axes, Mapping) or not axes:
        raise ConfigError(f"nested.axes is empty or missing; give a mapping axis -> values for some of "
                          f"{', '.join(AXES)}, e.g. {{depth: [1, 2], width: [16, 32]}}")
    out = {}
    for axis, values in axes.items():
        if axis not in AXES:
            raise ConfigError(f"nested.axes.{axis}: unknown axis; valid axes: {', '.join(AXES)}")
        if not isinstance(values, list) or not values:
            hint = f" from {_describe(valid_choices(vit_cfg, axis))}" if vit_cfg is not None else ""
            raise ConfigError(f"nested.axes.{axis} is empty; give a list of values{hint}")
        if vit_cfg is None:  # the model's sizes are not known yet: only the form is checked
            out[axis] = sorted({_int(v, f"nested.axes.{axis}") for v in values})
            continue
        try:
            out[axis] = sorted({check_axis(vit_cfg, axis, _int(v, f"nested.axes.{axis}")) for v in values})
        except SubModelError as err:
            raise ConfigError(f"nested.axes.{axis}: {err}") from None
    return out


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must hold integers, got {value!r}")
    return value


def eval_grid_of(cfg: DictConfig, vit_cfg, axes: Mapping[str, list[int]]) -> list:
    """``nested.eval_grid``: null/"all" = the grid of ``nested.axes``; a mapping axis -> values; or keys."""
    from modules.sorted_vit import SubModelError, resolve
    from modules.submodel import SubModelSpace, parse_grid

    spec = options(cfg, "nested", NestedSchema).eval_grid
    if spec is not None and spec != "all" and not isinstance(spec, (Mapping, list)):
        raise ConfigError(f"nested.eval_grid={spec!r}: give null (the nested.axes grid), a mapping axis -> "
                          "values, or a list of keys such as ['depth=1,width=16']")
    if isinstance(spec, Mapping) and any(not isinstance(v, list) or not v for v in spec.values()):
        raise ConfigError(f"nested.eval_grid={spec} has an empty axis; every axis needs a list of values")
    try:
        grid = parse_grid(spec, SubModelSpace(axes))
        for sub in grid:
            resolve(vit_cfg, sub)
    except SubModelError as err:
        raise ConfigError(f"nested.eval_grid: {err}") from None
    return grid


# --- validation: cheap, before anything is loaded or written --------------------------------
def validate(cfg: DictConfig) -> None:
    from data.images import SOURCES
    from modules.sorted_vit import SubModelError, resolve
    from modules.submodel import SubModelSpace

    source = options(cfg, "data", DataSchema).source
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} is not an option; valid choices: "
                          f"{', '.join(SOURCES)}")
    if options(cfg, "latency", LatencySchema).device == "cuda":  # its type and range: the schemas, checked before
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("latency.device=cuda but no CUDA device is available; valid choices here: auto, cpu")
    shape, classes = _data_shape(cfg)
    vit_cfg = model_config(cfg, shape, classes)
    if vit_cfg is not None and shape is not None and options(cfg, "model", ModelSchema).name_or_path:
        check_image_shape(vit_cfg, shape)
    method = method_of(cfg)
    axes = axes_of(cfg, vit_cfg)
    if vit_cfg is None:  # a hub checkpoint whose sizes model.* does not state: checked once loaded
        return
    if not isinstance(method, str):  # an independently trained small model
        try:
            resolve(vit_cfg, method)
        except SubModelError as err:
            raise ConfigError(f"nested.method: {err}") from None
        return
    eval_grid_of(cfg, vit_cfg, axes)
    if method == "sorted":
        for key, minimum in (("sampling.num_random", 0), ("sampling.num_per_step", 1)):
            if get(cfg, key) is not None:
                require_int(cfg, key, minimum=minimum)
        try:
            instantiate(cfg.sampling)(space=SubModelSpace(axes), seed=cfg.seed).submodels(0)
        except (SubModelError, TypeError) as err:
            raise ConfigError(f"sampling: {str(err).splitlines()[0]}") from None


def check_image_shape(vit_cfg, shape: tuple[int, int, int]) -> None:
    c, h, _ = shape
    if h != vit_cfg.image_size:
        raise ConfigError(f"data.image_size={h}: the model expects {vit_cfg.image_size}x{vit_cfg.image_size} "
                          f"images; set data.image_size={vit_cfg.image_size}")
    if c != vit_cfg.num_channels:
        raise ConfigError(f"data.source={c}-channel images do not fit a {vit_cfg.num_channels}-channel model; "
                          "use a model built for them (model.name_or_path=null)")


# --- building the pieces from config --------------------------------------------------------
def build_model(cfg: DictConfig, datamodule):
    """The full ``SortedViT``: random from ``model.*`` sizes, or a HF ``ViTForImageClassification``."""
    from modules.sorted_vit import SortedViT, load_hf_vit

    image_shape, classes = datamodule.image_shape, datamodule.num_classes
    name = options(cfg, "model", ModelSchema).name_or_path
    if not name:
        return SortedViT(model_config(cfg, image_shape, classes))
    from transformers import ViTForImageClassification

    # config changes the checkpoint allows (head size, dropouts); its sizes are checked, never changed
    changes = {k: v for k, v in plain(cfg.model).items()
               if k not in MODEL_KEYS_NOT_CONFIG + CHECKPOINT_SIZES and v is not None}
    changes.setdefault("num_labels", classes)
    try:  # ignore_mismatched_sizes: the classifier is re-initialised when num_labels differs
        hf = ViTForImageClassification.from_pretrained(str(name), ignore_mismatched_sizes=True, **changes)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.name_or_path={name!r} could not be loaded: {first}") from None
    model_config(cfg, image_shape, classes, hf_config=hf.config)  # model.* sizes match the checkpoint's
    model = load_hf_vit(hf)
    check_image_shape(model.config, image_shape)
    return model


def build(cfg: DictConfig):
    from modules.sorted_vit import build_independent, copy_slices
    from modules.submodel import FixedSampler
    from modules.vision_module import NestedClassifier

    datamodule = instantiate(cfg.data, seed=cfg.seed)
    if options(cfg, "data", DataSchema).source == "hf":
        datamodule.setup()  # shape and classes are known only once loaded
    model = build_model(cfg, datamodule)
    method = method_of(cfg)
    if isinstance(method, str):
        axes = axes_of(cfg, model.config)
        grid = eval_grid_of(cfg, model.config, axes)
    else:  # a separate small ViT shaped like the sub-network, evaluated under the sub-network's key
        small = build_independent(model.config, method)
        if options(cfg, "nested", NestedSchema).independent_init == "slice":
            copy_slices(model, small, method)  # start from the (pretrained) weights of that slice
        model = small
        axes = {axis: [value] for axis, value in method.dims}
        grid = [method]
    nested = model.nested(axes)
    if method == "sorted":
        sampler = instantiate(cfg.sampling)(space=nested.space, seed=cfg.seed)
    else:
        sampler = FixedSampler(nested.space, seed=cfg.seed, choice="largest")
    module = NestedClassifier(model, nested, sampler, optimizer=instantiate(cfg.optimizer),
                              scheduler=plain(cfg.scheduler), eval_grid=grid)
    return module, datamodule


# --- after the grid evaluation: costs, table, plot, exports ---------------------------------
def measure_latency_ms(model, sub, batch_size: int = 1, warmup: int = 3, repeats: int = 20,
                       device=None, autocast_dtype=None) -> float:
    """Median wall time of one forward of a ``batch_size`` batch through sub-network ``sub``, in ms."""
    import contextlib

    import torch

    from modules.timing import median_ms

    cfg = model.config
    device = device or next(model.parameters()).device
    x = torch.randn(batch_size, cfg.num_channels, cfg.image_size, cfg.image_size, device=device)
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        return median_ms(lambda: model(x, sub), device, warmup, repeats)


def cost_metrics(cfg: DictConfig, model, grid) -> dict[str, float]:
    """``params@<sub>``, ``macs@<sub>``, ``latency_ms@<sub>`` for every sub-network of ``grid``."""
    import torch

    from modules.sorted_vit import count_flops, count_params
    from modules.submodel import metric_key

    device, latency = latency_device(cfg), options(cfg, "latency", LatencySchema)
    precision = str(options(cfg, "trainer", TrainerSchema).precision)
    autocast = torch.bfloat16 if device.type == "cuda" and "bf16" in precision else None
    was_training, old_device = model.training, next(model.parameters()).device
    model.eval().to(device)
    out: dict[str, float] = {}
    try:
        for sub in grid:
            out[metric_key("params", sub)] = count_params(model, sub)
            out[metric_key("macs", sub)] = count_flops(model, sub)
            # the sliced weights as stored (task=select's memory budget)
            out[metric_key("memory_mb", sub)] = out[metric_key("params", sub)] * next(model.parameters()).element_size() / 2**20
            if latency.repeats > 0:
                out[metric_key("latency_ms", sub)] = measure_latency_ms(
                    model, sub, latency.batch_size, latency.warmup, latency.repeats, device, autocast)
    finally:
        model.to(old_device).train(was_training)
    return out


def kept_fraction(metrics: Mapping[str, float], grid, metric: str) -> dict[str, float]:
    """``kept/<metric>@<sub>``: the sub-network's metric over the largest evaluated sub-network's."""
    from modules.submodel import metric_key

    def size(sub):
        return (metrics.get(metric_key("macs", sub), 0), sub.dims)

    largest = max(grid, key=size)
    ref = metrics.get(metric_key(metric, largest))
    if not ref:
        return {}
    return {metric_key(f"kept/{metric}", sub): metrics[metric_key(metric, sub)] / ref
            for sub in grid if metric_key(metric, sub) in metrics}


def submodel_rows(metrics: Mapping[str, float], grid, metric: str) -> tuple[list[str], list[list[Any]]]:
    """The per-run table: one row per sub-network, ordered by MACs."""
    from modules.submodel import metric_key

    split = metric.split("/")[0]
    names = ["params", "macs", "latency_ms", "val/acc", "test/acc", f"kept/{metric}", f"{split}/loss"]
    names = [n for n in dict.fromkeys(names) if any(metric_key(n, s) in metrics for s in grid)]
    rows = [[sub.key, *[metrics.get(metric_key(n, sub)) for n in names]] for sub in grid]
    rows.sort(key=lambda r: (r[1 + names.index("macs")] if "macs" in names else 0, r[0]))
    return ["submodel", *names], rows


def export_submodels(cfg: DictConfig, model, metrics: Mapping[str, Any], grid, run_dir: Path) -> list[Path]:
    """``export.submodels`` (best, largest, smallest or keys) as standalone ViTs: ``model.pt`` + ``config.json``."""
    from modules.sorted_vit import count_flops
    from modules.submodel import SubModel

    export = options(cfg, "export", ExportSchema)
    by_cost = sorted(grid, key=lambda s: (count_flops(model, s), s.dims))
    out = []
    for choice in export.submodels or []:
        if choice == "best":
            key = metrics.get("best/submodel")
            sub = SubModel.parse(key) if key else None
        elif choice in ("largest", "smallest"):
            sub = by_cost[-1 if choice == "largest" else 0]
        else:
            sub = SubModel.parse(str(choice))
        if sub is None:
            continue
        folder = run_dir / export.dir / (sub.key.replace("=", "_").replace(",", "_") or "full")
        export_one(model, sub, folder)
        if folder not in out:
            out.append(folder)
    return out


def export_one(model, sub, folder: Path) -> list[Path]:
    """Sub-network ``sub`` as a standalone ViT: ``model.pt`` + ``config.json`` in ``folder``."""
    import dataclasses
    import json

    import torch

    from modules.sorted_vit import build_independent, copy_slices

    small = copy_slices(model, build_independent(model.config, sub), sub) if sub.dims else model
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(small.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(small.config), indent=2) + "\n")
    return [folder / "model.pt", folder / "config.json"]


def after_eval(cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
    from experiments.results.pareto import plot_run
    from experiments.results.files import markdown_table, write_csv

    grid, model = module.eval_grid, module.model
    metrics.update(cost_metrics(cfg, model, grid))
    metrics["latency/device"] = str(latency_device(cfg))
    metric = options(cfg, "eval", EvalSchema).metric
    metrics.update(kept_fraction(metrics, grid, metric))
    metrics["method"] = method_label(options(cfg, "nested", NestedSchema).method)
    header, rows = submodel_rows(metrics, grid, metric)
    table = markdown_table(header, rows)
    (run_dir / "submodels.md").write_text(table + "\n")
    write_csv(run_dir / "submodels.csv", header, rows)
    print(f"\nAccuracy and cost per sub-network:\n{table}")
    written = [run_dir / "submodels.md"]
    plot = plot_run(metrics, grid, metric, run_dir / "pareto.png", title=f"{get(cfg, 'name')} ({metrics['method']})")
    if plot:
        written.append(plot)
    return written + export_submodels(cfg, model, metrics, grid, run_dir)


# --- the paradigm ---------------------------------------------------------------------------------
@dataclasses.dataclass
class NestedSchema:
    yaml: ClassVar[str] = "nested/sorted_vit"
    closed: ClassVar[bool] = True
    method: str = "sorted"
    axes: Optional[dict] = opt({"depth": [1, 2, 3, 4], "width": [16, 32, 48, 64]})
    eval_grid: Union[None, str, dict, list] = None
    independent_init: Literal["random", "slice"] = "random"


@dataclasses.dataclass
class ModelSchema:
    """``model``: SortedViTConfig's sizes (conf/model/vit_tiny.yaml); nulls are taken from the data or checkpoint."""
    yaml: ClassVar[str] = "model/vit_tiny"
    closed: ClassVar[bool] = True
    name_or_path: Optional[str] = None
    image_size: Optional[int] = opt(None, min=1)
    patch_size: Optional[int] = opt(2, min=1)
    num_channels: Optional[int] = opt(None, min=1)
    hidden_size: Optional[int] = opt(64, min=1)
    num_hidden_layers: Optional[int] = opt(4, min=1)
    num_attention_heads: Optional[int] = opt(4, min=1)
    intermediate_size: Optional[int] = opt(128, min=1)
    num_labels: Optional[int] = opt(None, min=1)
    hidden_act: str = "gelu"
    layer_norm_eps: float = opt(1e-12, above=0)
    qkv_bias: bool = True
    hidden_dropout_prob: float = opt(0.0, min=0, below=1)
    attention_probs_dropout_prob: float = opt(0.0, min=0, below=1)
    initializer_range: float = opt(0.02, min=0)


@dataclasses.dataclass
class DataSchema:
    yaml: ClassVar[str] = "data/digits"
    elsewhere: ClassVar[dict] = {"hf_id": "data/cifar10", "image_column": "data/cifar10", "label_column": "data/cifar10",
                                 "cache_dir": "data/cifar10", "data_dir": "data/fashion_mnist"}  # hub / local sources only
    closed: ClassVar[bool] = True
    source: str = "digits"  # checked against data/images.py's sources in validate
    hf_id: Optional[str] = None
    data_dir: Optional[str] = None
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    val_fraction: float = opt(0.1, min=0, below=1)
    test_fraction: float = opt(0.2, min=0, below=1)
    train_subset: Optional[int] = opt(None, min=1)
    image_size: Optional[int] = opt(None, min=1)
    normalize: bool = True
    mean: Optional[list[float]] = opt(None, min_len=1)  # per channel (null = the training split's)
    std: Optional[list[float]] = opt(None, above=0, min_len=1)
    batch_size: int = opt(128, min=1)
    eval_batch_size: Optional[int] = opt(512, min=1)
    num_workers: int = opt(0, min=0)
    cache_dir: Optional[str] = None


class VisionParadigm(Paradigm):
    name = "vision"
    PLOT_METRICS = ("test/acc", "test/loss")

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        return {"model": ModelSchema, "nested": NestedSchema, "latency": LatencySchema, "data": DataSchema}

    def validate(self, cfg: DictConfig) -> None:
        validate(cfg)

    def build(self, cfg: DictConfig):
        return build(cfg)

    def after_eval(self, cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
        return after_eval(cfg, module, metrics, run_dir)

    def export_submodel(self, cfg: DictConfig, module, sub, folder: Path) -> list[Path]:
        return export_one(module.model, sub, folder)
