"""Loading HF causal LMs: by hub id, local folder, offline alias, or a tiny random config.

The NF4 base is plain transformers + bitsandbytes (``BitsAndBytesConfig``), so what we train on is
exactly what QLoRA/PEFT users load.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

RANDOM_PREFIX = "random:"


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return dtype


def byte_tokenizer():
    """A 259-token byte-level tokenizer (256 bytes + pad/bos/eos) for tiny random models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efficient-transformers-lab"


def materialize_random(arch: str, config_kwargs: dict[str, Any], seed: int = 0) -> Path:
    """Save a randomly initialised model of ``arch`` once, so it loads through from_pretrained
    (and therefore through the same quantization path) as a real checkpoint does."""
    from transformers import AutoConfig, AutoModelForCausalLM

    key = hashlib.sha256(json.dumps([arch, config_kwargs, seed], sort_keys=True).encode()).hexdigest()[:12]
    folder = _cache_root() / "models" / f"random-{arch}-{key}"
    if (folder / "config.json").exists():
        return folder
    config = AutoConfig.for_model(arch, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    byte_tokenizer().save_pretrained(tmp)
    tmp.rename(folder) if not folder.exists() else None
    return folder


def resolve(name_or_path: str, random_config: dict | None = None) -> str:
    """An offline alias, ``random:<arch>``, a local folder, or an HF id -> what from_pretrained takes."""
    if name_or_path.startswith(RANDOM_PREFIX):
        return str(materialize_random(name_or_path[len(RANDOM_PREFIX):], dict(random_config or {})))
    from modules.offline import resolve_model_path

    return resolve_model_path(name_or_path)


def load_causal_lm(name_or_path: str, dtype: str = "float32", quantization_config: Any = None,
                   gradient_checkpointing: bool = False, attn_implementation: str | None = "sdpa",
                   random_config: dict | None = None, device_map: Any = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer). With a quantization config the linear weights load as bitsandbytes
    layers; on CPU they are quantized when placed with ``device_map="cpu"``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path, random_config)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = device_map if device_map is not None else _default_device_map()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads, so a fully frozen base still works.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training; generation turns the cache back on per call
    return model, tokenizer


def _default_device_map() -> Any:
    # One process per device: put the whole quantized model on this process's GPU (or the CPU).
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return "cpu"


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
