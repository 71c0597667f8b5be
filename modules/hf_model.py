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
    bare backbone (an encoder for sequence classification: its head is new at load, as for a real one);
    ``head="image_classification"`` a ViT with its classifier."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    keyed = [arch, config_kwargs, seed] + ([head] if head != "causal_lm" else [])  # causal-LM keys unchanged
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    folder = _cache_root() / "models" / f"random-{arch}-{key}"
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForImageClassification

    config = AutoConfig.for_model(arch, **config_kwargs)
    auto = {"causal_lm": AutoModelForCausalLM, "none": AutoModel, "image_classification": AutoModelForImageClassification}
    with torch.random.fork_rng(devices=[]):  # the caller's RNG must not depend on whether the cache was warm
        torch.manual_seed(seed)
        model = auto[head].from_config(config)
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


# --- shrunk stand-ins of named architectures (rehearsals: docs/rehearsal.md) ------------------------------
#: transformers model_type of each hub id a preset names (their real configs cannot be downloaded here)
ARCHITECTURES = {
    "meta-llama/Llama-2-13b-hf": "llama", "meta-llama/Llama-2-7b-hf": "llama", "huggyllama/llama-7b": "llama",
    "huggyllama/llama-13b": "llama", "WeOpenML/PandaLM-7B-v1": "llama", "tiiuae/falcon-40b": "falcon",
    "gpt2": "gpt2", "FacebookAI/roberta-base": "roberta", "google-t5/t5-base": "t5",
    "google/vit-base-patch16-224": "vit", "openai/whisper-base": "whisper",
}
BYTE_VOCAB = 260  # the byte tokenizer's 259 ids fit
_PAD, _BOS, _EOS = 256, 257, 258  # its <pad>, <s>, </s>


def architecture_of(name_or_path: str) -> str:
    """The transformers model_type of a hub id a preset names (``random:<arch>`` gives its own)."""
    if name_or_path.startswith(RANDOM_PREFIX):
        return name_or_path[len(RANDOM_PREFIX):]
    if name_or_path not in ARCHITECTURES:
        raise ValueError(f"no known architecture for {name_or_path!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name_or_path]


def shrunk_config(arch: str, layers: int = 2, hidden: int = 32, heads: int = 4, positions: int = 1024) -> dict[str, Any]:
    """Config kwargs of a small random model of ``arch`` (the same transformers class as the real one):
    ``layers`` blocks of width ``hidden`` with ``heads`` heads, the byte tokenizer's vocabulary, and the
    architecture's distinguishing flags kept (Falcon-40b's new decoder with grouped KV heads and parallel
    attention, LLaMA's grouped KV heads, T5's and Whisper's encoder-decoder)."""
    kv = max(1, heads // 2)
    special = dict(pad_token_id=_PAD, bos_token_id=_BOS, eos_token_id=_EOS)
    if arch == "llama":
        return dict(vocab_size=BYTE_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=positions,
                    tie_word_embeddings=False, **special)
    if arch == "falcon":
        return dict(vocab_size=BYTE_VOCAB, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=kv,
                    num_hidden_layers=layers, new_decoder_architecture=True, parallel_attn=True, bias=False,
                    alibi=False, **special)
    if arch == "gpt2":
        return dict(vocab_size=BYTE_VOCAB, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions,
                    bos_token_id=_BOS, eos_token_id=_EOS)
    if arch in ("roberta", "bert"):  # RoBERTa's positions start after its padding index: room for it
        return dict(vocab_size=BYTE_VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=heads, max_position_embeddings=_PAD + positions + 2, **special)
    if arch == "t5":
        return dict(vocab_size=BYTE_VOCAB, d_model=hidden, d_kv=hidden // heads, d_ff=2 * hidden, num_layers=layers,
                    num_decoder_layers=layers, num_heads=heads, decoder_start_token_id=_PAD, pad_token_id=_PAD,
                    eos_token_id=_EOS)
    if arch == "vit":
        return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=4 * hidden)
    if arch == "whisper":
        return dict(vocab_size=BYTE_VOCAB, d_model=hidden, encoder_layers=layers, decoder_layers=1,
                    encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * hidden,
                    decoder_ffn_dim=2 * hidden, num_mel_bins=80, max_source_positions=1500,
                    max_target_positions=64, decoder_start_token_id=_BOS, pad_token_id=_PAD, bos_token_id=_BOS,
                    eos_token_id=_EOS)
    raise ValueError(f"no shrunk config for architecture {arch!r}; known: llama, falcon, gpt2, roberta, bert, t5, "
                     "vit, whisper")
