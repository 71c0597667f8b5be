"""The causal-LM paradigm (QDyLoRA; SoFT later): validate, build, and post-evaluation exports.

A paradigm module exposes ``validate(cfg)``, ``build(cfg) -> (LightningModule, LightningDataModule)``,
``after_eval(cfg, module, metrics, run_dir) -> [exported paths]`` and ``PLOT_METRICS``.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.config import ConfigError, get, instantiate, int_list, require_choice, require_int, require_number

PLOT_METRICS = ("test/em", "test/loss", "test/ppl")


# --- validation: cheap, before anything is loaded or written ------------------------------
def validate(cfg: DictConfig) -> None:
    kind = require_choice(cfg, "adapter.kind", ("none", "nested_lora"))
    if kind == "nested_lora":
        r_max = require_int(cfg, "adapter.r_max", minimum=1)
        require_int(cfg, "adapter.r_min", minimum=1, maximum=r_max)
        require_number(cfg, "adapter.alpha", minimum=0)
        require_number(cfg, "adapter.dropout", minimum=0)
        require_choice(cfg, "adapter.scale", ("alpha/b", "alpha/r_max", "alpha/sqrt(b)"))
        int_list(cfg, "adapter.eval_ranks", 1, r_max)
    elif get(cfg, "quantization.enabled"):
        raise ConfigError("adapter=none (full fine-tuning) cannot train a quantized base; "
                          "use quantization=none or an adapter (lora, dylora)")
    for key in ("data.batch_size", "data.eval_batch_size", "data.max_length", "eval.max_new_tokens"):
        require_int(cfg, key, minimum=1)
    check_model_path(str(get(cfg, "model.name_or_path")))


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
               if k not in ("kind", "eval_ranks")}
    nested = attach_adapter(model, cfg.adapter.kind, **options)
    return model, tokenizer, nested


def eval_grid(cfg: DictConfig, nested) -> list:
    from modules.submodel import SubModel

    ranks = int_list(cfg, "adapter.eval_ranks", 1, get(cfg, "adapter.r_max", 1))
    if ranks is None or "rank" not in nested.space.axes:
        return nested.space.grid()
    return [SubModel.of(rank=r) for r in ranks]


def build_module(cfg: DictConfig, model, tokenizer, nested):
    from experiments.metrics import exact_match, first_answer_line
    from modules.lm_module import NestedCausalLM

    sampler = instantiate(cfg.sampling)(space=nested.space, seed=cfg.seed)
    return NestedCausalLM(model, tokenizer, nested, sampler, optimizer=instantiate(cfg.optimizer),
                          scheduler=OmegaConf.to_container(cfg.scheduler), eval_grid=eval_grid(cfg, nested),
                          generate=cfg.eval.generate, max_new_tokens=cfg.eval.max_new_tokens,
                          answer_fn=first_answer_line, score_fn=exact_match)


def build(cfg: DictConfig):
    model, tokenizer, nested = build_lm(cfg)
    return build_module(cfg, model, tokenizer, nested), instantiate(cfg.data, tokenizer=tokenizer, seed=cfg.seed)


def after_eval(cfg: DictConfig, module, metrics: dict, run_dir: Path) -> list[Path]:
    from modules.adapters.nested_lora import export_peft_adapter, lora_layers
    from modules.submodel import SubModel

    if get(cfg, "adapter.kind") != "nested_lora" or not list(lora_layers(module.model)):
        return []
    grid = {s.key: s for s in module.eval_grid}
    wanted = []
    for choice in get(cfg, "export.submodels") or []:
        if choice == "best":
            key = metrics.get("best/submodel")
        elif choice in ("largest", "smallest"):
            key = getattr(module.nested.space, choice).key
        else:
            key = SubModel.parse(str(choice)).key
        if key and key not in wanted:
            wanted.append(key)
    out = []
    for key in wanted:
        sub = grid.get(key) or SubModel.parse(key)
        rank = sub["rank"]
        out.append(export_peft_adapter(module.model, rank, run_dir / cfg.export.dir / key.replace("=", "_"),
                                       base_model_name_or_path=str(cfg.model.name_or_path)))
    return out
