"""The causal-LM paradigm (QDyLoRA; SoFT later): validate, build, and post-evaluation exports.

A paradigm module exposes ``validate(cfg)``, ``build(cfg) -> (LightningModule, LightningDataModule)``,
``after_eval(cfg, module, metrics, run_dir) -> [exported paths]`` and ``PLOT_METRICS``.
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.config import (ConfigError, get, instantiate, int_list, require_bool, require_choice, require_int,
                                require_number)

PLOT_METRICS = ("test/em", "test/loss", "test/ppl")


ADAPTER_KINDS = ("none", "nested_lora", "peft_lora")
ANSWER_FORMATS = ("first_line", "gsm8k")
ANSWER_FNS = {"first_line": "first_answer_line", "gsm8k": "extract_gsm8k_answer"}  # in experiments.metrics


# --- validation: cheap, before anything is loaded or written ------------------------------
def validate(cfg: DictConfig) -> None:
    kind = require_choice(cfg, "adapter.kind", ADAPTER_KINDS)
    if kind != "none":
        r_max = require_int(cfg, "adapter.r_max", minimum=1)
        require_number(cfg, "adapter.alpha", minimum=0)
        require_number(cfg, "adapter.dropout", minimum=0)
        eval_ranks(cfg)
    if kind == "nested_lora":
        require_int(cfg, "adapter.r_min", minimum=1, maximum=r_max)
        require_choice(cfg, "adapter.scale", ("alpha/b", "alpha/r_max", "alpha/sqrt(b)"))
        if require_bool(cfg, "adapter.matryoshka") and require_bool(cfg, "adapter.frozen_prefix"):
            raise ConfigError("adapter.matryoshka=true trains every rank at once; it cannot be combined with "
                              "adapter.frozen_prefix=true (which trains only component b): set one of them to false")
    elif require_bool(cfg, "adapter.matryoshka"):
        raise ConfigError(f"adapter.matryoshka=true needs adapter.kind=nested_lora (adapter=dylora or "
                          f"adapter=matryoshka_lora), got adapter.kind={kind}")
    training_sampler(cfg, rank_axes(cfg))
    if get(cfg, "export.merge") and get(cfg, "quantization.enabled"):
        dynamic = kind == "nested_lora" and get(cfg, "adapter.r_min") != get(cfg, "adapter.r_max")
        raise ConfigError("export.merge=true on a 4-bit base" + (" while ranks are dynamic" if dynamic else "") +
                          ": merging would fix one rank into quantized weights; export adapters only "
                          "(export.merge=false) or train with quantization=none")
    if kind == "none" and get(cfg, "quantization.enabled"):
        raise ConfigError("adapter=none (full fine-tuning) cannot train a quantized base; "
                          "use quantization=none or an adapter (lora, dylora)")
    for key in ("data.batch_size", "data.eval_batch_size", "data.max_length", "eval.max_new_tokens"):
        require_int(cfg, key, minimum=1)
    require_choice(cfg, "eval.answer_format", ANSWER_FORMATS)
    for choice in get(cfg, "export.submodels") or []:
        if choice not in ("best", "largest", "smallest") and not str(choice).startswith("rank="):
            raise ConfigError(f"export.submodels: {choice!r} is not one of best, largest, smallest, rank=<int>")
    check_model_path(str(get(cfg, "model.name_or_path")))


def eval_ranks(cfg: DictConfig) -> list[int] | None:
    """``adapter.eval_ranks``: a list, ``pow2`` (1, 2, 4, ... r_max), ``all`` (1..r_max) or null
    (the trained ranks r_min..r_max). PEFT's fixed-rank LoRA can only be evaluated at its rank."""
    r_max = require_int(cfg, "adapter.r_max", minimum=1)
    spec = get(cfg, "adapter.eval_ranks")
    if spec == "pow2":
        ranks = sorted({2 ** i for i in range(r_max.bit_length()) if 2 ** i <= r_max} | {r_max})
    elif spec == "all":
        ranks = list(range(1, r_max + 1))
    else:
        ranks = int_list(cfg, "adapter.eval_ranks", 1, r_max)
    if get(cfg, "adapter.kind") == "peft_lora" and ranks not in (None, [r_max]):
        raise ConfigError(f"adapter.eval_ranks={ranks}: PEFT's LoRA has one rank; use null or [{r_max}] "
                          "(or adapter=dylora / adapter=lora_svd for many ranks)")
    return ranks


def rank_axes(cfg: DictConfig) -> dict[str, list[int]]:
    """The training space the adapter adds (what ``attach_adapter`` returns), from config alone."""
    kind = get(cfg, "adapter.kind")
    if kind == "none":
        return {}
    r_max = require_int(cfg, "adapter.r_max", minimum=1)
    r_min = get(cfg, "adapter.r_min") if kind == "nested_lora" else r_max
    return {"rank": list(range(int(r_min), r_max + 1))}


def training_sampler(cfg: DictConfig, axes):
    """The sampler of the training sub-models: ``sampling`` over the adapter's space; with
    adapter.matryoshka=true no rank is drawn (the fixed diagonal trains every rank at r_max), so it is
    the largest sub-model. ``sampling``'s own errors and a sampler that conflicts with MatryoshkaLoRA
    (anything but the plain default draw or fixed at the largest) are ConfigErrors."""
    from modules.submodel import SAMPLERS, FixedSampler, SubModelError, SubModelSpace, UniformSampler

    space = SubModelSpace(axes)
    seed = get(cfg, "seed", 0)
    try:
        sampler = instantiate(cfg.sampling)(space=space, seed=seed) if get(cfg, "sampling") is not None else None
    except (SubModelError, TypeError) as err:
        msg = str(err).splitlines()[0]
        head = re.split(r"[=.: ]", msg, maxsplit=1)[0]  # a message that starts with the key names it in full
        raise ConfigError(f"sampling.{msg}" if head in cfg.sampling else f"sampling: {msg}") from None
    if not require_bool(cfg, "adapter.matryoshka"):
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


def check_model_path(name_or_path: str) -> None:
    """A local-looking path must exist; aliases and hub ids are checked when loaded."""
    from modules.hf_model import RANDOM_PREFIX

    looks_local = name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.count("/") > 1
    if not name_or_path.startswith(RANDOM_PREFIX) and looks_local and not Path(name_or_path).expanduser().exists():
        raise ConfigError(f"model.name_or_path={name_or_path!r}: no such folder; give an existing local folder, "
                          f"an HF hub id (org/name) or an offline alias ({', '.join(offline_aliases())})")


def offline_aliases() -> list[str]:
    from modules.offline import OFFLINE_MODELS

    return sorted(OFFLINE_MODELS)


# --- building the pieces from config ------------------------------------------------------
def build_lm(cfg: DictConfig):
    """(model, tokenizer, nested) from the model/quantization/adapter groups."""
    from modules.adapters import attach_adapter
    from modules.hf_model import load_causal_lm
    from modules.offline import OfflineModelError

    quant = instantiate(cfg.quantization.config) if get(cfg, "quantization.enabled") else None
    m = cfg.model
    try:
        model, tokenizer = load_causal_lm(
            m.name_or_path, m.dtype, quant, m.gradient_checkpointing, m.get("attn_implementation"),
            OmegaConf.to_container(m.random_config) if m.get("random_config") else None)
    except OfflineModelError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:  # not on the hub / not cached offline / not a model folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.name_or_path={m.name_or_path!r} could not be loaded: {first}") from None
    options = {k: v for k, v in OmegaConf.to_container(cfg.adapter, resolve=True).items()
               if k not in ("kind", "eval_ranks", "post_hoc_svd")}
    nested = attach_adapter(model, cfg.adapter.kind, **options)
    return model, tokenizer, nested


def eval_grid(cfg: DictConfig, nested) -> list:
    from modules.submodel import SubModel

    ranks = eval_ranks(cfg) if get(cfg, "adapter.kind") != "none" else None
    if ranks is None:
        return nested.space.grid()
    return [SubModel.of(rank=r) for r in ranks]


def build_module(cfg: DictConfig, model, tokenizer, nested):
    from experiments import metrics
    from modules.lm_module import NestedCausalLM

    sampler = training_sampler(cfg, nested.space.axes)
    return NestedCausalLM(model, tokenizer, nested, sampler, optimizer=instantiate(cfg.optimizer),
                          scheduler=OmegaConf.to_container(cfg.scheduler), eval_grid=eval_grid(cfg, nested),
                          generate=cfg.eval.generate, max_new_tokens=cfg.eval.max_new_tokens,
                          answer_fn=getattr(metrics, ANSWER_FNS[cfg.eval.answer_format]),
                          score_fn=metrics.exact_match)


def build(cfg: DictConfig):
    model, tokenizer, nested = build_lm(cfg)
    return build_module(cfg, model, tokenizer, nested), instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed)


def before_eval(cfg: DictConfig, module) -> None:
    """The post-hoc SVD baseline: after training a fixed-rank LoRA, re-factor every layer so that
    rank b is the best rank-b approximation of the learned update (then every rank is evaluable)."""
    if get(cfg, "adapter.post_hoc_svd"):
        from modules.adapters.svd_truncate import svd_truncate_

        svd_truncate_(module.model)


def after_eval(cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
    """Export the chosen ranks as PEFT adapters (and, with export.merge, as merged HF models)."""
    from modules.adapters.nested_lora import export_peft_adapter, lora_layers, merged_state_dict

    if not list(lora_layers(module.model)):
        return []
    out = []
    for rank in export_ranks(cfg, module, metrics):
        folder = run_dir / cfg.export.dir / f"rank_{rank}"
        out.append(export_peft_adapter(module.model, rank, folder, base_model_name_or_path=str(cfg.model.name_or_path)))
        if get(cfg, "export.merge"):
            module.model.save_pretrained(folder / "merged", state_dict=merged_state_dict(module.model, rank))
            module.tokenizer.save_pretrained(folder / "merged")
            out.append(folder / "merged")
    return out


def export_ranks(cfg: DictConfig, module, metrics: dict) -> list[int]:
    """``export.submodels``: best, largest, smallest, or keys such as rank=4 -> distinct ranks."""
    from modules.submodel import SubModel

    ranks: list[int] = []
    for choice in get(cfg, "export.submodels") or []:
        if choice == "best":
            key = metrics.get("best/submodel")
        elif choice in ("largest", "smallest"):
            key = getattr(module.nested.space, choice).key
        else:
            key = str(choice)
        try:
            rank = SubModel.parse(key)["rank"] if key else None
        except (KeyError, ValueError):
            raise ConfigError(f"export.submodels: {choice!r} is not best, largest, smallest or rank=<int>") from None
        if rank is not None and rank not in ranks:
            ranks.append(rank)
    return ranks
