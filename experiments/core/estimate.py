"""GPU memory estimate for QDyLoRA / QLoRA training, counted from a model config on the meta device.

``task=estimate`` prints a table (component -> GiB) and checks it against ``estimate.gpu_gib``;
``check_fits(cfg)`` is the same check, for the train task to call before loading anything.

What is exact and what is modelled (docs/memory.md compares it with GPU measurements):

* **Parameters** are counted exactly: the model is built with ``AutoModelForCausalLM.from_config`` under
  ``torch.device("meta")`` (no memory) and the adapters are injected with ``inject_nested_lora``.
* **NF4 base** (bitsandbytes ``Linear4bit``, what transformers' ``BitsAndBytesConfig`` builds): every
  ``nn.Linear`` except the modules transformers keeps in high precision (``get_keys_to_not_convert``:
  output embeddings / tied weights). For a weight of n elements, blocksize b = 64::

      packed 4-bit codes           ceil(n / 2)                              bytes (uint8 storage)
      double quant (default):
        absmax, 8-bit              ceil(n / b)                              bytes
        second-level absmax, fp32  4 * ceil(ceil(n / b) / 256)               bytes
        per tensor                 4*16 (NF4 code) + 4*256 (8-bit code) + 4 (offset) bytes
      no double quant:
        absmax, fp32               4 * ceil(n / b)                          bytes
        per tensor                 4*16 (NF4 code)                          bytes

  i.e. 0.5 + 1/64 + 4/(64*256) = 0.5159 bytes per weight with double quantization (0.5625 without).
  Biases, norms, embeddings and ``lm_head`` stay in ``weight_dtype``.
* **Adapters**: A (r_max x d_in) + B (d_out x r_max) per wrapped linear, in ``adapter_dtype`` (fp32), plus
  a gradient of the same size (our dynamic adapter's gradient covers all r_max rows: slicing's backward
  writes into a full-size buffer) and the optimizer states (AdamW: 2 fp32 per parameter; paged AdamW
  32-bit the same bytes). torch's foreach AdamW also allocates one parameter-sized fp32 temporary in its
  step (``sqrt(exp_avg_sq)``); bitsandbytes' fused optimizers do not.
* **Activations** (modelled), batch B x sequence S, hidden d, L layers, activation bytes a. With gradient
  checkpointing the L layer inputs are kept (L * B*S*d*a) and one layer is recomputed at a time; without
  it every layer's working set is kept. One layer's working set = for each linear map its input and
  output (B*S*(d_in + d_out)*a) + for each adapted map its own copy of the input in the adapter dtype
  (B*S*d_in*4 when that differs from a or dropout > 0), the dropout mask (B*S*d_in bytes) and the rank-b
  output (B*S*b*4); eager attention adds 2*B*heads*S^2*a; ``recompute_factor`` scales it. On an NF4 base
  bitsandbytes dequantizes each weight to the compute dtype for its matmul: ``dequant_buffers`` copies of
  the largest one. The loss holds B*S*V*(a + 4*logits_fp32_copies) (logits, fp32 upcast, log-softmax).
* **Peak** (what ``torch.cuda.max_memory_allocated`` sees) = the largest of three phases, each on top of
  weights + adapters + optimizer states: forward end (layer inputs + logits), backward (gradients + layer
  inputs + one recomputed layer + dequantized weight), optimizer step (gradients + step temporaries).
  **Total** adds ``overhead_gib`` (CUDA context, cuBLAS workspace, fragmentation): that must fit ``gpu_gib``.
  Calibrated against GPU measurements of PEFT QLoRA (docs/memory.md): within 3% on Falcon-40B and LLaMA-2-7B.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import CONF_DIR, ConfigError, get, require_int, require_number
from experiments.core.schema import TrainerSchema, options
from modules.options import option

GIB = 1024 ** 3


@dataclass
class EstimateSchema:
    """``estimate`` (conf/estimate/default.yaml, where each option is described). Several keys read other groups
    (``${data.batch_size}``): a paradigm checks this group after those, so an error names the key the user typed."""
    yaml: ClassVar[str] = "estimate/default"
    closed: ClassVar[bool] = True
    config: Optional[str] = None
    batch_size: int = option(1, min=1)
    seq_len: int = option(1, min=1)
    r_max: int = option(64, min=1)
    rank: Optional[int] = option(None, min=1)
    targets: list[str] = option([], min_len=1)
    adapter_dtype: str = "float32"
    dropout: float = option(0.0, min=0, below=1)
    quantized: bool = True
    double_quant: bool = True
    blocksize: int = option(64, min=1)
    weight_dtype: str = "float32"
    act_dtype: str = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = None
    recompute_factor: float = option(1.0, min=0)
    dequant_buffers: int = option(1, min=0)
    logits_fp32_copies: int = option(2, min=0)
    optimizer: str = "torch.optim.AdamW"
    overhead_gib: float = option(0.75, min=0)
    gpu_gib: float = option(31.7, min=0)
    check: Union[bool, str] = "auto"
    gpu: str = "NVIDIA H200"
    peak_tflops: float = option(989, min=0)
    bandwidth_tbps: float = option(4.8, min=0)
    train_mfu: float = option(0.235, min=0, max=1)
    devices: int = option(1, min=1)

# Shapes of the paper's models, COPIED from each model's config.json on the HF hub (the keys that fix the
# parameter count and the activation sizes; no weights). Used when the hub cannot be reached. The keys
# are hub ids (what conf/model/*.yaml name) and short names for estimate.config=<name>.
_LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
_LLAMA_13B = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                  num_attention_heads=40, num_key_value_heads=40, tie_word_embeddings=False)
KNOWN_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # huggyllama/llama-7b, huggyllama/llama-13b (LLaMA-1): max_position_embeddings 2048, rms_norm_eps 1e-6
    "huggyllama/llama-7b": ("llama", {**_LLAMA_7B, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}),
    "huggyllama/llama-13b": ("llama", {**_LLAMA_13B, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}),
    # meta-llama/Llama-2-7b-hf, meta-llama/Llama-2-13b-hf: max_position_embeddings 4096, rms_norm_eps 1e-5
    "meta-llama/Llama-2-7b-hf": ("llama", {**_LLAMA_7B, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}),
    "meta-llama/Llama-2-13b-hf": ("llama", {**_LLAMA_13B, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}),
    # tiiuae/falcon-40b: 60 layers, d 8192, 128 query / 8 KV heads, parallel attention, no biases, tied lm_head
    "tiiuae/falcon-40b": ("falcon", dict(vocab_size=65024, hidden_size=8192, num_attention_heads=128, num_kv_heads=8,
                                         num_hidden_layers=60, new_decoder_architecture=True, parallel_attn=True,
                                         bias=False, alibi=False, layer_norm_epsilon=1e-5)),
}
SHORT_NAMES = {"llama-7b": "huggyllama/llama-7b", "llama-13b": "huggyllama/llama-13b",
               "llama2-7b": "meta-llama/Llama-2-7b-hf", "llama2-13b": "meta-llama/Llama-2-13b-hf",
               "falcon-40b": "tiiuae/falcon-40b"}

# optimizer _target_ -> (state bytes per trainable parameter, step temporaries in bytes per parameter)
OPTIMIZERS: dict[str, tuple[int, int]] = {
    "torch.optim.AdamW": (8, 4), "torch.optim.Adam": (8, 4),  # foreach step: one fp32 sqrt(v) temporary
    "bitsandbytes.optim.PagedAdamW32bit": (8, 0), "bitsandbytes.optim.AdamW32bit": (8, 0),  # fused kernels
    "bitsandbytes.optim.PagedAdamW": (8, 0), "bitsandbytes.optim.AdamW": (8, 0),
    "bitsandbytes.optim.PagedAdamW8bit": (2, 0), "bitsandbytes.optim.AdamW8bit": (2, 0),
    "torch.optim.SGD": (0, 0),
}
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


# --- counting ---------------------------------------------------------------------------------------
def nf4_bytes(numel: int, blocksize: int = 64, double_quant: bool = True) -> int:
    """Bytes bitsandbytes stores for one NF4 weight of ``numel`` elements (see the module docstring)."""
    blocks = math.ceil(numel / blocksize)
    packed = math.ceil(numel / 2)
    if double_quant:
        return packed + blocks + 4 * math.ceil(blocks / 256) + 4 * 16 + 4 * 256 + 4
    return packed + 4 * blocks + 4 * 16


@dataclass
class ModelCounts:
    """Exact parameter counts of a model with adapters injected (built on the meta device)."""

    arch: str
    n_layers: int
    hidden: int
    vocab: int
    heads: int
    quantized_numels: list[int] = field(default_factory=list)  # one entry per weight that NF4 would store
    nonquant_params: int = 0          # everything else in the base, tied weights counted once
    adapter_params: int = 0           # A and B of every wrapped linear (r_max each)
    layer_linears: list[tuple[int, int, bool]] = field(default_factory=list)  # (d_in, d_out, adapted) in one layer
    unconverted_subclasses: list[str] = field(default_factory=list)  # linear subclasses transformers leaves unquantized

    @property
    def base_params(self) -> int:
        return sum(self.quantized_numels) + self.nonquant_params


def _decoder_layers(model) -> Any:
    """The ModuleList of decoder blocks (the longest ModuleList; its length is num_hidden_layers)."""
    from torch import nn

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ConfigError("cannot find the decoder layers of this model (no nn.ModuleList)")
    return max(lists, key=len)


def count_model(config, targets, r_max: int, quantized: bool = True) -> ModelCounts:
    """Build ``config`` on the meta device, inject nested LoRA on ``targets``, count everything."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    from modules.adapters.nested_lora import NestedLoRALinear, inject_nested_lora

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        keep = get_keys_to_not_convert(model) if quantized else []
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        quant_names = {n for n in linears if quantized and should_convert_module(n, keep)}
        counts = ModelCounts(arch=type(model).__name__, n_layers=int(text.num_hidden_layers),
                             hidden=int(text.hidden_size), vocab=int(text.vocab_size),
                             heads=int(text.num_attention_heads))
        # transformers replaces only modules whose type *is* nn.Linear (replace_with_bnb_linear)
        counts.unconverted_subclasses = sorted({type(linears[n]).__name__ for n in quant_names
                                                if type(linears[n]) is not nn.Linear})
        quant_weights = {id(linears[n].weight) for n in quant_names}
        counts.quantized_numels = [linears[n].weight.numel() for n in sorted(quant_names)]
        inject_nested_lora(model, list(targets), r_max, alpha=1.0)  # inside the meta context: nothing allocated
    seen = set()
    for p in model.parameters():  # parameters() yields a tied weight once
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p.requires_grad:
            counts.adapter_params += p.numel()
        elif id(p) not in quant_weights:
            counts.nonquant_params += p.numel()
    first = _decoder_layers(model)[0]
    for module in first.modules():
        if isinstance(module, NestedLoRALinear):
            counts.layer_linears.append((module.in_features, module.out_features, True))
        elif isinstance(module, nn.Linear) and not any(module is m.base_layer for m in first.modules()
                                                        if isinstance(m, NestedLoRALinear)):
            counts.layer_linears.append((module.in_features, module.out_features, False))
    return counts


def load_config(name_or_path: str, random_config: dict | None = None, override: str | None = None):
    """A transformers config: estimate.config (file, folder or built-in name), random:<arch>, a built-in
    hub id, an offline alias / local folder, or the hub (cached)."""
    from transformers import AutoConfig

    from modules.hf_model import RANDOM_PREFIX

    source = override or name_or_path
    key = SHORT_NAMES.get(source, source)
    if key in KNOWN_CONFIGS:
        arch, kwargs = KNOWN_CONFIGS[key]
        return AutoConfig.for_model(arch, **kwargs), key
    if not override and source.startswith(RANDOM_PREFIX):
        return AutoConfig.for_model(source[len(RANDOM_PREFIX):], **dict(random_config or {})), source
    path = Path(source).expanduser()
    if path.is_file():
        data = json.loads(path.read_text())
        arch = data.pop("model_type", None)
        if not arch:
            raise ConfigError(f"estimate.config={source!r} has no model_type; give a transformers config.json")
        return AutoConfig.for_model(arch, **{k: v for k, v in data.items() if not k.startswith("_")}), source
    from modules.offline import OfflineModelError, resolve_model_path

    try:
        resolved = resolve_model_path(source)
    except OfflineModelError as err:
        raise ConfigError(str(err)) from None
    try:
        return AutoConfig.from_pretrained(resolved), source
    except (OSError, ValueError):
        key_name = "estimate.config" if override else "model.name_or_path"
        raise ConfigError(f"{key_name}={source!r}: no model config available (offline?); pass "
                          f"estimate.config=<config.json or folder> or a built-in shape: "
                          f"{', '.join(SHORT_NAMES)}") from None


# --- the estimate -----------------------------------------------------------------------------------
@dataclass
class Estimate:
    model: str
    batch_size: int
    seq_len: int
    r_max: int
    rank: int
    counts: ModelCounts
    components: dict[str, float]        # name -> bytes
    peak_bytes: float                   # allocated peak (max_memory_allocated)
    total_bytes: float                  # + overhead: what must fit on the card
    gpu_gib: float
    phases: dict[str, float] = field(default_factory=dict)  # phase -> allocated bytes; peak = the largest
    warnings: list[str] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.gpu_gib

    def table(self) -> list[list[Any]]:
        rows = [[name, b / GIB] for name, b in self.components.items()]
        rows += [[f"allocated at the {phase}", b / GIB] for phase, b in self.phases.items()]
        rows += [["peak allocated (max_memory_allocated)", self.peak_gib], ["total with overhead", self.total_gib],
                 ["budget (estimate.gpu_gib)", self.gpu_gib]]
        return rows

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"model": self.model, "arch": c.arch, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "r_max": self.r_max, "rank": self.rank, "base_params": c.base_params,
                "quantized_params": sum(c.quantized_numels), "nonquant_params": c.nonquant_params,
                "adapter_params": c.adapter_params, "gib": {k: v / GIB for k, v in self.components.items()},
                "phases_gib": {k: v / GIB for k, v in self.phases.items()},
                "peak_gib": self.peak_gib, "total_gib": self.total_gib, "gpu_gib": self.gpu_gib, "fits": self.fits,
                "warnings": self.warnings}


def _dtype_bytes(cfg: DictConfig, key: str) -> int:
    value = str(get(cfg, key)).replace("torch.", "")
    if value not in DTYPE_BYTES:
        raise ConfigError(f"{key}={value!r} is not a dtype; valid choices: float32, bfloat16, float16")
    return DTYPE_BYTES[value]


def estimate_components(counts: ModelCounts, *, batch_size: int, seq_len: int, rank: int, quantized: bool,
                        double_quant: bool = True, blocksize: int = 64, weight_bytes: int = 2,
                        act_bytes: int = 2, adapter_bytes: int = 4, dropout: float = 0.0,
                        gradient_checkpointing: bool = True, eager_attention: bool = False,
                        recompute_factor: float = 1.0, dequant_buffers: int = 1, logits_fp32_copies: int = 2,
                        optimizer_state_bytes: int = 8, optimizer_temp_bytes: int = 4
                        ) -> tuple[dict[str, float], dict[str, float]]:
    """(component -> bytes, phase -> allocated bytes) for one training step (see the module docstring).

    The allocated peak is the largest phase: the end of the forward (layer inputs + logits), the backward
    through one recomputed layer (gradients + layer inputs + working set + dequantized weight), or the
    optimizer step (gradients + step temporaries). Weights, adapters and optimizer states are always there.
    """
    tokens = batch_size * seq_len
    comp: dict[str, float] = {}
    if quantized:
        comp["NF4 weights (+ quantization constants)"] = sum(nf4_bytes(n, blocksize, double_quant)
                                                             for n in counts.quantized_numels)
        comp["non-quantized weights (embeddings, norms, lm_head)"] = counts.nonquant_params * weight_bytes
    else:
        comp["base weights"] = (counts.nonquant_params + sum(counts.quantized_numels)) * weight_bytes
    comp["adapter weights"] = counts.adapter_params * adapter_bytes
    comp["optimizer states"] = counts.adapter_params * optimizer_state_bytes
    static = sum(comp.values())
    comp["adapter gradients"] = grads = counts.adapter_params * adapter_bytes
    working = 0.0  # one layer's saved tensors
    for d_in, d_out, adapted in counts.layer_linears:
        working += tokens * (d_in + d_out) * act_bytes
        if adapted:  # the adapter's own input copy (cast to its dtype / dropped), dropout mask, rank-b output
            copy = adapter_bytes if (adapter_bytes != act_bytes or dropout > 0) else 0
            working += tokens * (d_in * (copy + (1 if dropout > 0 else 0)) + rank * adapter_bytes)
    if eager_attention:
        working += 2 * batch_size * counts.heads * seq_len ** 2 * act_bytes
    working *= recompute_factor
    if gradient_checkpointing:
        comp["activations: checkpointed layer inputs"] = kept = counts.n_layers * tokens * counts.hidden * act_bytes
        comp["activations: one layer recomputed"] = working
    else:
        comp["activations: all layers"] = kept = counts.n_layers * working
        working = 0.0
    dequant = dequant_buffers * max(counts.quantized_numels) * act_bytes if quantized and counts.quantized_numels else 0
    if dequant:
        comp["activations: dequantized NF4 weight"] = dequant
    comp["activations: logits and loss"] = logits = tokens * counts.vocab * (act_bytes + 4 * logits_fp32_copies)
    comp["optimizer step temporaries"] = temp = counts.adapter_params * optimizer_temp_bytes
    phases = {"forward end": static + kept + logits,
              "backward": static + grads + kept + working + dequant,
              "optimizer step": static + grads + temp}
    return comp, phases


def _estimate_node(cfg: DictConfig) -> DictConfig:
    """cfg with an ``estimate`` node: the config's own, or conf/estimate/default.yaml when the root
    config does not compose the group (resolved against the same root, so interpolations work)."""
    if get(cfg, "estimate") is not None:
        return cfg
    merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(merged, False)
    merged.estimate = OmegaConf.load(CONF_DIR / "estimate" / "default.yaml")
    return merged


def estimate(cfg: DictConfig) -> Estimate:
    """The memory estimate for the composed config (model, adapter, quantization, data, estimate.*)."""
    cfg = _estimate_node(cfg)
    batch = require_int(cfg, "estimate.batch_size", minimum=1)
    seq = require_int(cfg, "estimate.seq_len", minimum=1)
    r_max = require_int(cfg, "estimate.r_max", minimum=1)
    rank = require_int(cfg, "estimate.rank", minimum=1, maximum=r_max) if get(cfg, "estimate.rank") else r_max
    gpu_gib = require_number(cfg, "estimate.gpu_gib", minimum=0)
    opt = str(get(cfg, "estimate.optimizer"))
    if opt not in OPTIMIZERS:
        raise ConfigError(f"estimate.optimizer={opt!r} has no memory model; valid choices: {', '.join(OPTIMIZERS)}")
    attn = get(cfg, "estimate.attn_implementation") or "sdpa"
    name = str(get(cfg, "model.name_or_path"))
    rc = get(cfg, "model.random_config")
    config, label = load_config(name, OmegaConf.to_container(rc, resolve=True) if rc is not None else None,
                                get(cfg, "estimate.config"))
    targets = get(cfg, "estimate.targets")
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    if not targets:
        raise ConfigError("estimate.targets is empty; name the linear maps that get an adapter (model.lora_targets)")
    quantized = bool(get(cfg, "estimate.quantized"))
    try:
        counts = count_model(config, targets, r_max, quantized)
    except ValueError as err:  # inject_nested_lora: targets matched nothing
        raise ConfigError(f"estimate.targets: {err}") from None
    comp, phases = estimate_components(
        counts, batch_size=batch, seq_len=seq, rank=rank, quantized=quantized,
        double_quant=bool(get(cfg, "estimate.double_quant")),
        blocksize=require_int(cfg, "estimate.blocksize", minimum=1),
        weight_bytes=_dtype_bytes(cfg, "estimate.weight_dtype"), act_bytes=_dtype_bytes(cfg, "estimate.act_dtype"),
        adapter_bytes=_dtype_bytes(cfg, "estimate.adapter_dtype"),
        dropout=require_number(cfg, "estimate.dropout", minimum=0),
        gradient_checkpointing=bool(get(cfg, "estimate.gradient_checkpointing")),
        eager_attention=attn == "eager", recompute_factor=require_number(cfg, "estimate.recompute_factor", minimum=0),
        dequant_buffers=require_int(cfg, "estimate.dequant_buffers", minimum=0),
        logits_fp32_copies=require_int(cfg, "estimate.logits_fp32_copies", minimum=0),
        optimizer_state_bytes=OPTIMIZERS[opt][0], optimizer_temp_bytes=OPTIMIZERS[opt][1])
    peak = max(phases.values())
    overhead = require_number(cfg, "estimate.overhead_gib", minimum=0) * GIB
    comp_with_overhead = {**comp, "CUDA context + allocator overhead": overhead}
    warnings = []
    if quantized and counts.unconverted_subclasses:
        warnings.append(f"transformers' BitsAndBytesConfig replaces only exact nn.Linear modules: this model's "
                        f"{', '.join(counts.unconverted_subclasses)} layers load unquantized through plain "
                        f"from_pretrained; load_causal_lm (modules/hf_model.py) quantizes them, as counted here")
    return Estimate(label, batch, seq, r_max, rank, counts, comp_with_overhead, peak, peak + overhead, gpu_gib,
                    phases, warnings)


def _too_big_message(est: Estimate) -> str:
    return (f"{est.model} with batch {est.batch_size} x seq {est.seq_len} (adapter r_max {est.r_max}) needs "
            f"{est.total_gib:.1f} GiB > budget estimate.gpu_gib={est.gpu_gib:g}; reduce data.batch_size / "
            f"data.max_length (estimate.batch_size / estimate.seq_len), adapter.r_max or the adapter targets, "
            f"enable model.gradient_checkpointing / quantization=nf4, or raise estimate.gpu_gib for a larger card")


def check_fits(cfg: DictConfig, force: bool = False) -> Estimate | None:
    """Raise ConfigError (one line) if the training config does not fit ``estimate.gpu_gib``.

    Cheap (meta device, no weights). ``estimate.check``: auto = only when the trainer targets a GPU,
    true = always, false = never; ``force`` ignores it. Skipped for ``adapter.kind=none`` (full
    fine-tuning is not modelled). Returns the estimate (None when skipped).
    """
    cfg = _estimate_node(cfg)
    mode = str(options(cfg, "estimate", EstimateSchema).check).lower()
    if mode not in ("auto", "true", "false"):
        raise ConfigError(f"estimate.check={mode!r} is not an option; valid choices: auto, true, false")
    on_gpu = options(cfg, "trainer", TrainerSchema).accelerator in ("gpu", "cuda")
    if not force and (mode == "false" or (mode == "auto" and not on_gpu)):
        return None
    if get(cfg, "adapter.kind") == "none":  # full fine-tuning: not what this estimate models
        return None
    est = estimate(cfg)
    if not est.fits:
        raise ConfigError(_too_big_message(est))
    return est


def preflight(cfg: DictConfig) -> list[str]:
    """What a GPU run says before it loads anything (``check_fits`` first: a run that cannot fit stops):
    its peak memory against the card and its expected time per phase; empty when the check is skipped."""
    from experiments.core.cost import cost_line, cost_phases

    est = check_fits(cfg)
    if est is None:
        return []
    node = _estimate_node(cfg)
    phases, _ = cost_phases(node, est.counts.base_params)
    return [f"memory estimate: peak {est.peak_gib:.1f} GiB, {est.total_gib:.1f} GiB with overhead, fits "
            f"estimate.gpu_gib={est.gpu_gib:g}", cost_line(phases, node)]


def format_report(est: Estimate) -> str:
    from experiments.results.files import markdown_table

    c = est.counts
    head = (f"Memory estimate: {est.model} ({c.arch}, {c.base_params / 1e9:.2f} B base parameters, "
            f"{sum(c.quantized_numels) / 1e9:.2f} B in quantizable linears, {c.adapter_params / 1e6:.1f} M adapter "
            f"parameters at r_max {est.r_max}), batch {est.batch_size} x seq {est.seq_len}, rank in step {est.rank}")
    verdict = (f"fits: {est.total_gib:.2f} GiB <= {est.gpu_gib:g} GiB" if est.fits
               else f"DOES NOT FIT: {est.total_gib:.2f} GiB > {est.gpu_gib:g} GiB")
    lines = [head, "", markdown_table(["component", "GiB"], est.table()), "", verdict]
    lines += [f"warning: {w}" for w in est.warnings]
    return "\n".join(lines)


def estimate_task(cfg: DictConfig) -> float:
    """task=estimate: print the table, write estimate.json / estimate.md, fail (exit 2) if it does not fit."""
    from experiments.results.files import write_json
    from experiments.core.runtime import run_dir_of

    from experiments.core.cost import cost_phases, format_cost

    est = estimate(cfg)
    phases, notes = cost_phases(_estimate_node(cfg), est.counts.base_params)
    cost_text, cost = format_cost(phases, _estimate_node(cfg), notes)
    report = format_report(est) + "\n\n" + cost_text
    run_dir = run_dir_of()
    write_json(run_dir / "estimate.json", {**est.as_dict(), "time": cost})
    (run_dir / "estimate.md").write_text(report + "\n")
    print(report)
    if not est.fits:
        raise ConfigError(_too_big_message(est))
    return est.total_gib
