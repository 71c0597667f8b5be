"""The causal-LM paradigm (QDyLoRA; SoFT next): its groups' schemas, checks, building, exports.

The nested space of an LM is the adapter's axes (``rank``) composed with an optional ``depth`` axis (the
first n decoder layers read through the shared norm and head): a depth x rank grid is a config
(``depth.exits=[...]`` beside ``adapter=dylora``).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import ConfigError, get, instantiate, require_bool
from experiments.core import schema
from experiments.core.schema import opt, options
from experiments.paradigms.base import Paradigm

ANSWER_FNS = {"first_line": "first_answer_line", "gsm8k": "extract_gsm8k_answer"}  # in modules.metrics


# --- the schemas of the LM groups -----------------------------------------------------------------
@dataclasses.dataclass
class ModelSchema:
    yaml: ClassVar[str] = "model/smollm2_135m"
    elsewhere: ClassVar[dict] = {"random_config": "model/tiny_llama"}  # a random model's architecture
    closed: ClassVar[bool] = True
    name_or_path: str = "smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = "sdpa"
    lora_targets: list[str] = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_len=1)  # the adapters' target_modules: [] would wrap nothing
    ffn_blocks: Optional[list[str]] = opt(["mlp"], min_len=1)  # whole FFN blocks (KronA^B wraps them); null: none
    random_config: Optional[dict] = None


@dataclasses.dataclass
class QuantizationSchema:
    yaml: ClassVar[str] = "quantization/none"
    elsewhere: ClassVar[dict] = {"config": "quantization/nf4"}  # the BitsAndBytesConfig of a quantized load
    closed: ClassVar[bool] = True
    enabled: bool = False
    config: Optional[dict] = None


@dataclasses.dataclass
class DataSchema:
    yaml: ClassVar[str] = "data/stdlib_qa"
    closed: ClassVar[bool] = True
    source: str = "stdlib_qa"
    format: Optional[str] = None
    prompt_template: Optional[str] = "### Question:\n{instruction}{input}\n\n### Answer:\n"
    source_options: Optional[dict] = opt({})
    splits: Optional[dict] = None
    mc_eval: Optional[dict] = None
    max_length: int = opt(128, min=1)
    batch_size: int = opt(8, min=1)
    eval_batch_size: int = opt(16, min=1)
    limit_train: Optional[int] = opt(None, min=1)
    limit_val: Optional[int] = opt(64, min=1)
    limit_test: Optional[int] = opt(128, min=1)
    num_workers: int = opt(0, min=0)


@dataclasses.dataclass
class EvalSchema(schema.EvalSchema):
    yaml: ClassVar[str] = "eval/lm"
    closed: ClassVar[bool] = True
    higher_is_better: bool = True
    metric: str = "test/em"
    generate: bool = True
    max_new_tokens: int = opt(16, min=1)
    answer_format: Literal["first_line", "gsm8k"] = "first_line"


@dataclasses.dataclass
class ExportSchema(schema.ExportSchema):
    yaml: ClassVar[str] = "export/lm"
    closed: ClassVar[bool] = True
    submodels: list[str] = opt(["best", "largest"])
    merge: bool = False


@dataclasses.dataclass
class DepthSchema:
    yaml: ClassVar[str] = "depth/none"
    closed: ClassVar[bool] = True
    exits: Optional[list[int]] = opt(None, min=1)  # [] is refused by depth_axis (with what null means)
    eval_exits: Optional[list[int]] = opt(None, min=1)
    truncate: Optional[int] = opt(None, min=1)
    exit_heads: bool = False


@dataclasses.dataclass
class JudgeSchema:
    yaml: ClassVar[str] = "judge/none"
    closed: ClassVar[bool] = True
    kind: Literal["none", "logprob", "reference"] = "none"
    model: Optional[str] = None
    label: str = ""
    prompt: Literal["pandalm", "chat"] = "chat"
    tie: Optional[str] = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = opt(8, min=1)
    max_length: int = opt(1024, min=16)
    margin: float = opt(0.0, min=0)
    calibrate: bool = False
    against: Optional[str] = None


def adapter_of(cfg: DictConfig):
    from modules.adapters import AdapterError, get_adapter

    try:
        return get_adapter(get(cfg, "adapter.kind"))
    except AdapterError as err:
        raise ConfigError(str(err)) from None


def adapter_options(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.adapter, resolve=True)


class LMParadigm(Paradigm):
    name = "lm"
    PLOT_METRICS = ("test/em", "test/loss", "test/ppl")

    def schemas(self, cfg: DictConfig) -> dict[str, type]:
        from experiments.core.estimate import EstimateSchema

        return {"model": ModelSchema, "quantization": QuantizationSchema, "data": DataSchema, "eval": EvalSchema,
                "export": ExportSchema, "depth": DepthSchema, "judge": JudgeSchema,
                "adapter": adapter_of(cfg).options_schema, "estimate": EstimateSchema}  # estimate last: it reads the others

    # --- validation: cheap, before anything is loaded or written ------------------------------
    def validate(self, cfg: DictConfig) -> None:
        from modules.adapters import AdapterError

        adapter = adapter_of(cfg)
        quantized = options(cfg, "quantization", QuantizationSchema).enabled
        export = options(cfg, "export", ExportSchema)
        depth = options(cfg, "depth", DepthSchema)
        try:
            adapter.check(adapter_options(cfg), quantized=bool(quantized))
        except AdapterError as err:
            raise ConfigError(str(err)) from None
        axes = rank_axes(cfg)
        axes.update(depth_axis(cfg))
        training_sampler(cfg, axes)
        if export.merge and quantized:
            dynamic = [axis for axis, values in rank_axes(cfg).items() if len(values) > 1]
            raise ConfigError("export.merge=true on a 4-bit base" +
                              (f" while {dynamic[0]}s are dynamic" if dynamic else "") +
                              ": merging would fix one sub-model into quantized weights; export adapters only "
                              "(export.merge=false) or train with quantization=none")
        for choice in export.submodels or []:
            if choice not in ("best", "largest", "smallest") and not re.fullmatch(r"(\w+=\d+)(,\w+=\d+)*", str(choice)):
                raise ConfigError(f"export.submodels: {choice!r} is not one of best, largest, smallest, "
                                  "rank=<int> (or a sub-model key such as depth=2,rank=4)")
        check_model_path(str(options(cfg, "model", ModelSchema).name_or_path))
        if depth.exit_heads and not depth.exits:
            raise ConfigError("depth.exit_heads=true (SFT+ICT: a new head per exit) needs depth.exits, e.g. [6, 12, 18, 24]")
        check_judge(cfg)

    def check_resources(self, cfg: DictConfig) -> None:
        from experiments.core.estimate import preflight

        for line in preflight(cfg):  # a GPU run that cannot fit estimate.gpu_gib stops here (skipped on the CPU)
            print(line)

    # --- building --------------------------------------------------------------------------------
    def build(self, cfg: DictConfig):
        model, tokenizer, nested = build_lm(cfg)
        return build_module(cfg, model, tokenizer, nested), instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed)

    def prepare(self, ctx):
        module, datamodule = super().prepare(ctx)
        if module.exit_heads is not None:  # SFT+ICT: the new heads start from the head init_from just loaded
            module.exit_heads.reset_from_shared()
        return module, datamodule

    def before_eval(self, cfg: DictConfig, module) -> None:
        """The post-hoc SVD baseline: after training a fixed-rank LoRA, re-factor every layer so that
        rank b is the best rank-b approximation of the learned update (then every rank is evaluable)."""
        adapter_of(cfg).before_eval(module.model, adapter_options(cfg))

    def after_eval(self, cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
        """The costs of every evaluated sub-model (experiments/paradigms/lm_costs.py), the test generations per
        sub-model (generations.jsonl), judged against another run's (``judge.against``), then the chosen
        sub-models exported through the adapter (PEFT folders; merged HF models with export.merge)."""
        from experiments.paradigms.lm_costs import cost_metrics

        metrics.update(cost_metrics(module, module.eval_grid))
        out = []
        if module.generations:
            out.append(write_generations(run_dir / GENERATIONS_FILE, module.generations))
        if options(cfg, "judge", JudgeSchema).against:
            out.append(judge_against(cfg, module, metrics, run_dir))
        export_dir = options(cfg, "export", ExportSchema).dir
        for sub in export_submodels(cfg, module, metrics):
            out += self.export_submodel(cfg, module, sub, run_dir / export_dir / "_".join(f"{k}_{v}" for k, v in sub.dims))
        return out

    def export_submodel(self, cfg: DictConfig, module, sub, folder: Path) -> list[Path]:
        """The adapter's export of ``sub`` (the rank-b PEFT adapter); for a fully fine-tuned depth exit (SoFT),
        which no adapter holds, the exit as a standalone HF model (the first n layers, norm and head)."""
        adapter = adapter_of(cfg)
        module.nested.apply(sub)
        try:
            out = adapter.export(module.model, sub, folder, adapter_options(cfg),
                                 base_name=str(options(cfg, "model", ModelSchema).name_or_path),
                                 merge=bool(options(cfg, "export", ExportSchema).merge), tokenizer=module.tokenizer)
            if not out and sub.get("depth") is not None and adapter.kind == "none":
                from modules.multi_exit import exit_model

                exit_model(module.model, int(sub["depth"])).save_pretrained(folder)
                if module.tokenizer is not None:
                    module.tokenizer.save_pretrained(folder)
                out = [folder]
            return out
        finally:
            module.nested.apply(module.nested.space.largest)


def eval_ranks(cfg: DictConfig) -> list[int] | None:
    values = adapter_of(cfg).eval_values(adapter_options(cfg))
    return values.get("rank") if values else None


def rank_axes(cfg: DictConfig) -> dict[str, list[int]]:
    """The training space the adapter adds (what it attaches), from config alone."""
    return adapter_of(cfg).axes(adapter_options(cfg))


def depth_axis(cfg: DictConfig) -> dict[str, list[int]]:
    depth = options(cfg, "depth", DepthSchema)
    exits, truncate = depth.exits, depth.truncate
    model_layers = known_layers(cfg) if exits or truncate is not None else None
    if truncate is not None and model_layers is not None and truncate > model_layers:
        raise ConfigError(f"depth.truncate={truncate} is beyond the model's {model_layers} layers; "
                          f"valid: 1..{model_layers}")
    for key, null in (("exits", "no depth axis"), ("eval_exits", "the exits")):
        if getattr(depth, key) is not None and len(getattr(depth, key)) == 0:
            raise ConfigError(f"depth.{key}=[] is empty; give at least one exit, e.g. [6, 12, 18, 24], "
                              f"or null ({null})")
    if not exits:
        if depth.eval_exits:
            raise ConfigError(f"depth.eval_exits={list(depth.eval_exits)} needs a depth axis to evaluate; "
                              "set depth.exits too, e.g. depth.exits=[6, 12, 18, 24]")
        return {}
    layers = truncate or model_layers  # known before loading (a config on disk, or the truncation), else checked once loaded
    what = "the truncated model's" if truncate else "the model's"
    for key in ("exits", "eval_exits"):
        for i, n in enumerate(getattr(depth, key) or []):
            if layers is not None and not 1 <= n <= layers:
                raise ConfigError(f"depth.{key}[{i}]={n} is beyond {what} {layers} layers; valid exits: 1..{layers}")
    return {"depth": sorted(set(exits))}


def architecture_config(name_or_path: str, random_config: dict | None, hub: bool = True):
    """The transformers config of a model, without its weights (None where it cannot be read offline; with
    ``hub=False`` also for a hub id: only what is on disk is read, nothing is fetched)."""
    from transformers import AutoConfig

    from modules.hf_model import RANDOM_PREFIX

    if name_or_path.startswith(RANDOM_PREFIX):
        return AutoConfig.for_model(name_or_path[len(RANDOM_PREFIX):], **(random_config or {}))
    from modules.offline import OFFLINE_MODELS, OfflineModelError, converted_dir, package_dir

    path = name_or_path
    if name_or_path in OFFLINE_MODELS:  # read only what is already on disk: no conversion in a check
        spec = OFFLINE_MODELS[name_or_path]
        try:
            path = str(converted_dir(spec) if spec.converter else package_dir(spec))
        except OfflineModelError:
            return None
    if not hub and path == name_or_path and not Path(path).expanduser().is_dir():
        return None
    try:
        return AutoConfig.from_pretrained(path)
    except Exception:  # not on disk (a hub id offline, a model not converted yet): checked when it loads
        return None


def known_layers(cfg: DictConfig) -> int | None:
    """The decoder layers of ``model.name_or_path`` when its config is on disk (a random config, an offline alias
    already converted, a local folder); None for a hub id (nothing is fetched in a check)."""
    model = options(cfg, "model", ModelSchema)
    try:
        config = architecture_config(str(model.name_or_path), model.random_config or None, hub=False)
    except (ValueError, TypeError, KeyError):  # an unknown random:<arch> is check_model_path's error
        return None
    return getattr(config, "num_hidden_layers", None)


def training_sampler(cfg: DictConfig, axes):
    """The sampler of the training sub-models: ``sampling`` over the space; an adapter that trains every
    value of its axis in one forward (MatryoshkaLoRA) draws none, so it is the largest sub-model. ``sampling``'s
    own errors and a sampler that conflicts with MatryoshkaLoRA (anything but the plain default draw or fixed
    at the largest) are ConfigErrors."""
    from modules.submodel import SAMPLERS, FixedSampler, SubModelError, SubModelSpace, UniformSampler

    space = SubModelSpace(axes)
    seed = int(cfg.seed)
    try:
        sampler = instantiate(cfg.sampling)(space=space, seed=seed) if get(cfg, "sampling") is not None else None
    except (SubModelError, TypeError) as err:
        msg = str(err).splitlines()[0]
        head = re.split(r"[=.: ]", msg, maxsplit=1)[0]  # a message that starts with the key names it in full
        raise ConfigError(f"sampling.{msg}" if head in cfg.sampling else f"sampling: {msg}") from None
    adapter = adapter_of(cfg)
    if not getattr(adapter, "trains_all_at_once", lambda o: False)(adapter_options(cfg)):
        return sampler
    plain = (sampler is None or (type(sampler) is UniformSampler and sampler.num_per_step == 1 and not sampler.probs)
             or (type(sampler) is FixedSampler and sampler.sub == space.largest))
    if not plain:
        name = next((k for k, c in SAMPLERS.items() if type(sampler) is c), type(sampler).__name__)
        if type(sampler) is UniformSampler:
            name += " with a distribution, weights or num_per_step > 1"
        elif type(sampler) is FixedSampler:
            name += f" at {sampler.sub.key}"
        raise ConfigError(f"adapter.matryoshka=true trains every rank r_min..r_max in one forward at the largest "
                          f"rank, so no rank is drawn; sampling={name} conflicts with it: use sampling=fixed "
                          f"(choice: largest) or the plain sampling=uniform (then unused), or adapter.matryoshka=false")
    return FixedSampler(space, seed=seed, choice="largest")


def check_model_path(name_or_path: str, key: str = "model.name_or_path") -> None:
    """A local-looking path must exist, a ``random:<arch>`` must name a transformers architecture; aliases
    and hub ids are checked when loaded."""
    from modules.hf_model import RANDOM_PREFIX

    if name_or_path.startswith(RANDOM_PREFIX):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        arch = name_or_path[len(RANDOM_PREFIX):]
        if arch not in CONFIG_MAPPING_NAMES:
            close = sorted(a for a in CONFIG_MAPPING_NAMES if a[:2] == arch[:2])[:8] or ["llama", "gpt2", "falcon"]
            raise ConfigError(f"{key}={name_or_path!r}: unknown architecture {arch!r} for a random model; "
                              f"give random:<a transformers model_type>, e.g. {', '.join(close)}")

    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1
    if not name_or_path.startswith(RANDOM_PREFIX) and looks_local and not Path(name_or_path).expanduser().exists():
        raise ConfigError(f"{key}={name_or_path!r}: no such folder; give an existing local folder, "
                          f"an HF hub id (org/name) or an offline alias ({', '.join(offline_aliases())})")


GENERATIONS_FILE = "generations.jsonl"  # one line per test example and sub-model (written after evaluation)
JUDGE_FILE = "judge.jsonl"              # one line per judged pair: both orders' outcomes for this run's answer


def check_judge(cfg: DictConfig) -> None:
    """``judge``: only a run that judges (``judge.against`` set) needs its judge loadable and the other run's
    generations; both are checked here, before anything loads (a preset may name PandaLM and judge later)."""
    judge = options(cfg, "judge", JudgeSchema)
    kind, against = judge.kind, judge.against
    if judge.calibrate and kind != "logprob":
        raise ConfigError(f"judge.calibrate=true reads an LM judge's log-odds; judge.kind={kind} has none "
                          "(use judge=pandalm or judge=smollm2_standin)")
    if kind == "logprob" and not judge.model:
        raise ConfigError("judge.model is missing: judge.kind=logprob needs a judge LM (an HF id such as "
                          "WeOpenML/PandaLM-7B-v1, a local folder or an offline alias)")
    if not against:
        return
    if kind == "none":
        raise ConfigError(f"judge.against={against!r} but judge=none: choose a judge (judge=pandalm, "
                          "judge=smollm2_standin, judge=reference)")
    if not (Path(str(against)).expanduser() / GENERATIONS_FILE).is_file():
        raise ConfigError(f"judge.against={against!r}: no {GENERATIONS_FILE} there; give the folder of a finished "
                          "LM run (task=train or task=eval writes its test generations there)")
    if not options(cfg, "eval", EvalSchema).generate:
        raise ConfigError("judge.against needs this run's generations: eval.generate=false turns them off")
    if kind == "logprob":
        check_loadable(str(judge.model), "judge.model")


def check_loadable(name_or_path: str, key: str) -> None:
    """A model that can be loaded: an installed offline alias, a random:<arch>, or a folder / hub id whose
    config can be read (only config.json is fetched; offline, an id not in the cache fails here)."""
    from modules.hf_model import RANDOM_PREFIX
    from modules.offline import OFFLINE_MODELS, OfflineModelError, package_dir

    check_model_path(name_or_path, key)
    if name_or_path.startswith(RANDOM_PREFIX):
        return
    if name_or_path in OFFLINE_MODELS:
        try:
            package_dir(OFFLINE_MODELS[name_or_path])
        except OfflineModelError as err:
            raise ConfigError(f"{key}={name_or_path!r}: {err}") from None
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().exists()
                                   else name_or_path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}={name_or_path!r} cannot be loaded: {first}") from None


def write_generations(path: Path, generations: dict[str, list[dict]]) -> Path:
    import json

    with path.open("w") as fh:
        for cell, rows in generations.items():
            for row in rows:
                fh.write(json.dumps({"submodel": cell, **row}) + "\n")
    return path


def read_generations(path: Path) -> dict[str, list[dict]]:
    import json

    out: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row.pop("submodel"), []).append(row)
    return out


def build_judge(cfg: DictConfig, device):
    from modules.judge import LogProbJudge, ReferenceJudge

    j = options(cfg, "judge", JudgeSchema)
    if j.kind == "reference":
        return ReferenceJudge()
    from modules.hf_model import load_causal_lm

    model, tokenizer = load_causal_lm(str(j.model), str(j.dtype))
    return LogProbJudge(model.to(device), tokenizer, prompt=str(j.prompt), tie=j.tie, batch_size=int(j.batch_size),
                        max_length=int(j.max_length), margin=float(j.margin), name=str(j.label or j.model))


def judge_against(cfg: DictConfig, module, metrics: dict, run_dir: Path) -> Path:
    """Judge this run's test generations against ``judge.against``'s, cell by cell (the same sub-model key,
    e.g. SoFT exit n vs SFT exit n), both orders: ``test/judge@<cell>`` = (wins - losses) / total for this
    run, and the counts; every judged pair goes to judge.jsonl."""
    import json

    from modules.judge import judge_generations

    opts = options(cfg, "judge", JudgeSchema)
    theirs = read_generations(Path(str(opts.against)).expanduser() / GENERATIONS_FILE)
    judge = build_judge(cfg, module.device)
    print(f"judging against {opts.against} with {getattr(judge, 'name', opts.kind)}")
    results = judge_generations(judge, module.generations, theirs, bool(opts.calibrate))
    path = run_dir / JUDGE_FILE
    with path.open("w") as fh:
        for cell, (score, pairs) in results.items():
            for key, value in score.items():
                metrics["test/judge" + ("" if key == "score" else f"_{key}") + f"@{cell}"] = float(value)
            for pair in pairs:
                fh.write(json.dumps({"submodel": cell, "judge": getattr(judge, "name", ""),
                                     "calibrated": bool(opts.calibrate),
                                     "against": str(opts.against), **pair}) + "\n")
    return path


def offline_aliases() -> list[str]:
    from modules.offline import OFFLINE_MODELS

    return sorted(OFFLINE_MODELS)


# --- building the pieces from config ------------------------------------------------------
def build_lm(cfg: DictConfig):
    """(model, tokenizer, nested) from the model/quantization/adapter groups."""
    from modules.hf_model import load_causal_lm
    from modules.offline import OfflineModelError

    quant = instantiate(cfg.quantization.config) if options(cfg, "quantization", QuantizationSchema).enabled else None
    m = options(cfg, "model", ModelSchema)
    try:
        model, tokenizer = load_causal_lm(m.name_or_path, m.dtype, quant, m.gradient_checkpointing,
                                          m.attn_implementation, m.random_config or None)
    except OfflineModelError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:  # not on the hub / not cached offline / not a model folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.name_or_path={m.name_or_path!r} could not be loaded: {first}") from None
    depth_options = options(cfg, "depth", DepthSchema)
    if depth_options.truncate:  # the extracted baseline: the first n layers are the whole model
        from modules.multi_exit import MultiExitError, truncate_layers

        try:
            truncate_layers(model, int(depth_options.truncate))
        except MultiExitError as err:
            raise ConfigError(f"depth.truncate: {err}") from None
    adapter = adapter_of(cfg)
    nested = adapter.attach(model, adapter.attach_options(adapter_options(cfg)))
    depth = depth_axis(cfg)
    if depth:
        from modules.multi_exit import DecoderDepth, MultiExitError
        from modules.submodel import NestedModel

        key = "depth.exits"
        try:
            decoder = DecoderDepth(model)
            decoder.check_exits(depth["depth"])
            key = "depth.eval_exits"  # the error names the list the user wrote
            if depth_options.eval_exits:
                decoder.check_exits(list(depth_options.eval_exits))
        except MultiExitError as err:
            raise ConfigError(f"{key}: {err}") from None
        nested = NestedModel({**nested.axes_values, **depth}, {**nested.setters, "depth": decoder.set_depth})
    return model, tokenizer, nested


def with_exit_heads(model, nested):
    """SFT+ICT: freeze the whole model, add a new head per trained exit (a copy of the shared head) and make
    the depth setter route the model's head to the exit's own head. (heads, nested)."""
    from modules.multi_exit import ExitHeads
    from modules.submodel import NestedModel

    heads = ExitHeads(model, nested.axes_values["depth"]).install()
    model.requires_grad_(False)
    set_depth = nested.setters["depth"]

    def setter(n: int) -> None:
        set_depth(n)
        heads.select(n)

    return heads, NestedModel(nested.axes_values, {**nested.setters, "depth": setter})


def eval_grid(cfg: DictConfig, nested) -> list:
    """The product of each axis's evaluated values (the adapter's eval ranks, ``depth.eval_exits``)."""
    from modules.submodel import SubModelSpace

    values = dict(nested.space.axes)
    values.update(adapter_of(cfg).eval_values(adapter_options(cfg)) or {})
    eval_exits = options(cfg, "depth", DepthSchema).eval_exits
    if eval_exits and "depth" in values:
        values["depth"] = list(eval_exits)
    return SubModelSpace(values).grid()


def build_module(cfg: DictConfig, model, tokenizer, nested):
    import modules.metrics as metrics
    from modules.lm_module import NestedCausalLM

    heads = None
    if options(cfg, "depth", DepthSchema).exit_heads:
        heads, nested = with_exit_heads(model, nested)
    sampler = training_sampler(cfg, nested.space.axes)
    evaluation = options(cfg, "eval", EvalSchema)
    return NestedCausalLM(model, tokenizer, nested, sampler, optimizer=instantiate(cfg.optimizer),
                          scheduler=OmegaConf.to_container(cfg.scheduler), eval_grid=eval_grid(cfg, nested),
                          generate=evaluation.generate, max_new_tokens=evaluation.max_new_tokens,
                          answer_fn=getattr(metrics, ANSWER_FNS[evaluation.answer_format]),
                          score_fn=metrics.exact_match, exit_heads=heads)


def export_submodels(cfg: DictConfig, module, metrics: dict) -> list:
    """``export.submodels``: best, largest, smallest, or keys such as rank=4 -> distinct sub-models."""
    from modules.submodel import SubModel

    subs: list = []
    for choice in options(cfg, "export", ExportSchema).submodels or []:
        if choice == "best":
            key = metrics.get("best/submodel")
        elif choice in ("largest", "smallest"):
            key = getattr(module.nested.space, choice).key
        else:
            key = str(choice)
        sub = SubModel.parse(key) if key else None
        if sub is not None and sub.dims and sub not in subs:
            subs.append(sub)
    return subs
