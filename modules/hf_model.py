"""Loading HF causal LMs: by hub id, local folder, offline alias, or a tiny random config.

The NF4 base is plain transformers + bitsandbytes (``BitsAndBytesConfig``), so what we train on is
exactly what QLoRA/PEFT users load.
"""
from __future__ import annotations

import contextlib
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


def byte_tokenizer(append_eos: bool = False):
    """A 259-token byte-level tokenizer (256 bytes + pad/bos/eos) for tiny random models. ``append_eos`` ends
    every sequence with ``</s>`` as T5's own tokenizer does (its classifier pools the last EOS state)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if append_eos:
        eos = vocab["</s>"]
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efficient-transformers-lab"


def materialize_random(arch: str, config_kwargs: dict[str, Any], seed: int = 0, head: str = "causal_lm") -> Path:
    """Save a randomly initialised model of ``arch`` once, so it loads through from_pretrained
    (and therefore through the same quantization path) as a real checkpoint does. ``head="none"`` saves the
    bare backbone (an encoder for sequence classification: its head is new at load, as for a real one)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    keyed = [arch, config_kwargs, seed] + ([head] if head != "causal_lm" else [])  # causal-LM keys unchanged
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    folder = _cache_root() / "models" / f"random-{arch}-{key}"
    if (folder / "config.json").exists():
        return folder
    config = AutoConfig.for_model(arch, **config_kwargs)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG must not depend on whether the cache was warm
        torch.manual_seed(seed)
        model = (AutoModelForCausalLM if head == "causal_lm" else AutoModel).from_config(config)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    byte_tokenizer(append_eos=arch == "t5").save_pretrained(tmp)
    tmp.rename(folder) if not folder.exists() else None
    return folder


def resolve(name_or_path: str, random_config: dict | None = None, head: str = "causal_lm") -> str:
    """An offline alias, ``random:<arch>``, a local folder, or an HF id -> what from_pretrained takes."""
    if name_or_path.startswith(RANDOM_PREFIX):
        return str(materialize_random(name_or_path[len(RANDOM_PREFIX):], dict(random_config or {}), head=head))
    from modules.offline import resolve_model_path

    return resolve_model_path(name_or_path)


def load_causal_lm(name_or_path: str, dtype: str = "float32", quantization_config: Any = None,
                   gradient_checkpointing: bool = False, attn_implementation: str | None = "sdpa",
                   random_config: dict | None = None, device_map: Any = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer). With a quantization config the linear weights load as bitsandbytes
    layers; on CPU they are quantized when placed with ``device_map="cpu"``. A 4-bit load quantizes
    ``nn.Linear`` subclasses too (Falcon's ``FalconLinear``), which transformers alone leaves in bf16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name_or_path, random_config)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    four_bit = bool(getattr(quantization_config, "load_in_4bit", False))
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = device_map if device_map is not None else _default_device_map()
    with _linear_subclasses_quantized() if four_bit else contextlib.nullcontext():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if four_bit:  # whatever a future transformers leaves unconverted (the patch above may no longer reach it)
        quantize_unconverted_(model, quantization_config)
    keep_4bit_differentiable_(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads, so a fully frozen base still works.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training; generation turns the cache back on per call
    return model, tokenizer


#: classification heads of AutoModelForSequenceClassification families (BERT, RoBERTa, T5, LLaMA): never quantized
CLASSIFIER_HEADS = ["classifier", "pre_classifier", "classification_head", "score"]


def load_sequence_classifier(name_or_path: str, num_labels: int, dtype: str = "float32",
                             random_config: dict | None = None,
                             quantization_config: Any = None) -> tuple[nn.Module, Any]:
    """(AutoModelForSequenceClassification, tokenizer) by hub id, folder, offline alias or ``random:<arch>``;
    ``num_labels=1`` is regression (MSE). The classification head is new (re-initialised when its size
    differs from the checkpoint's). With a 4-bit quantization config the backbone's linear maps load as
    ``Linear4bit`` and the head stays in float (it is trained)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve(name_or_path, random_config, head="none")
    kwargs: dict[str, Any] = {}
    if quantization_config is not None:
        quantization_config.llm_int8_skip_modules = CLASSIFIER_HEADS
        kwargs = {"quantization_config": quantization_config, "device_map": _default_device_map()}
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, dtype=torch_dtype(dtype), ignore_mismatched_sizes=True,
        problem_type="regression" if num_labels == 1 else "single_label_classification", **kwargs)
    keep_4bit_differentiable_(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _default_device_map() -> Any:
    # One process per device: put the whole quantized model on this process's GPU (or the CPU).
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return "cpu"


def keep_4bit_differentiable_(model: nn.Module) -> nn.Module:
    """Switch off bitsandbytes' CPU inference repack in every ``Linear4bit`` of ``model``.

    On a CPU with AVX512-BF16, bitsandbytes 0.50.2 repacks a 4-bit weight in place for a kernel with no
    autograd the first time the layer runs in eval mode on an input that needs no gradient (every validation
    does). Every later forward then returns no gradient for the layer's input, so adapters upstream of it get
    wrong gradients. With the repack off, evaluation and training run the same differentiable kernel.
    A weight already repacked is converted back. Called wherever a 4-bit model is built."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)
    return model


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


# --- NF4 for every linear map, nn.Linear subclasses included ---------------------------------------------
# transformers (5.24) builds bitsandbytes layers only for modules whose type *is* nn.Linear
# (integrations/bitsandbytes.py: replace_with_bnb_linear), so Falcon's FalconLinear (a subclass whose
# forward is the same linear map) would load in bf16: 82 GB for Falcon-40b instead of ~21 GB in NF4.
def _is_bnb(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


@contextlib.contextmanager
def _linear_subclasses_quantized():
    """During a 4-bit from_pretrained, show transformers every nn.Linear subclass as nn.Linear on the
    (empty, meta) model, so those weights are quantized as they stream in: no bf16 copy is ever made on
    the device (quantizing after the load would first need the whole bf16 model in GPU memory)."""
    import transformers.integrations as integrations
    from transformers.quantizers.quantizers_utils import should_convert_module

    original = integrations.replace_with_bnb_linear

    def replace(model, *args, modules_to_not_convert=None, **kwargs):
        for name, module in model.named_modules():
            if (isinstance(module, nn.Linear) and type(module) is not nn.Linear and not _is_bnb(module)
                    and should_convert_module(name, modules_to_not_convert)):
                module.__class__ = nn.Linear  # replaced by a Linear4bit right away
        return original(model, *args, modules_to_not_convert=modules_to_not_convert, **kwargs)

    integrations.replace_with_bnb_linear = replace
    try:
        yield
    finally:
        integrations.replace_with_bnb_linear = original


def quantize_nf4_(model: nn.Module, compute_dtype: torch.dtype, double_quant: bool = True, blocksize: int = 64,
                  quant_type: str = "nf4", quant_storage: torch.dtype = torch.uint8,
                  keep: list[str] | None = None) -> nn.Module:
    """Replace the model's float linear maps, nn.Linear subclasses included, by bitsandbytes Linear4bit
    holding the same weights quantized exactly as a ``BitsAndBytesConfig`` load does (tests/test_benchmark.py).
    ``keep``: module names left alone (default: transformers' lm_head / tied weights). Layers already in
    bitsandbytes are kept."""
    import bitsandbytes as bnb
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep = get_keys_to_not_convert(model) if keep is None else keep
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or _is_bnb(module) or not should_convert_module(name, keep):
            continue
        device = module.weight.device
        layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type=quant_type,
                                  quant_storage=quant_storage, device="meta")
        layer.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, blocksize=blocksize,
                                         compress_statistics=double_quant, quant_type=quant_type,
                                         quant_storage=quant_storage, module=layer).to(device)
        if module.bias is not None:
            layer.bias = nn.Parameter(module.bias.data, requires_grad=False)
        model.set_submodule(name, layer)
        del module
    return keep_4bit_differentiable_(model)


def quantize_unconverted_(model: nn.Module, quantization_config: Any) -> list[str]:
    """After a 4-bit load: quantize the float linear maps transformers did not convert, with the
    ``BitsAndBytesConfig``'s settings. Returns their names (empty when transformers converted all)."""
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    # what the load itself kept in high precision (lm_head, tied weights, llm_int8_skip_modules, fp32 modules)
    keep = getattr(getattr(model, "hf_quantizer", None), "modules_to_not_convert", None)
    keep = list(keep) if keep is not None else get_keys_to_not_convert(model)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and not _is_bnb(m) and should_convert_module(n, keep)]
    if names:
        q = quantization_config
        quantize_nf4_(model, torch_dtype(q.bnb_4bit_compute_dtype), bool(q.bnb_4bit_use_double_quant),
                      quant_type=q.bnb_4bit_quant_type, quant_storage=torch_dtype(q.bnb_4bit_quant_storage),
                      keep=keep)
    return names
