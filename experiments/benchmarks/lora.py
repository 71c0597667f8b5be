"""Ours vs PEFT in one process, on the same model weights, batch, sequence and inputs (docs/benchmark.md).

Variants (``benchmark.variants``):

    ours_fixed         our NestedLoRALinear at rank r_max (plain LoRA)
    ours_dynamic       the same model, rank drawn each step (UniformSampler over 1..r_max)
    peft_lora          PEFT LoraConfig(r=r_max) on the same base
    ours_nf4_fixed / ours_nf4_dynamic / peft_qlora: the same on an NF4 + double-quant base (QLoRA)

A training step is forward + backward + AdamW step + zero_grad (a dynamic step also draws and sets its
rank), timed after ``warmup`` steps; the median (and min) of ``steps`` is reported. With ``interleave``
every model stays alive and the timed steps go in rounds, one step per variant of a base kind per round,
in a fresh random (seeded) order each round, so a shared machine's load drifts hit every variant alike
and no variant always follows the same neighbour; the paired ratio (median over rounds of
ours_i / peft_i) cancels most of what drift is left. Without ``interleave`` (big GPU models) one model
at a time. On a CPU the process CPU time of each step (``time.process_time``) is recorded too: with one
torch thread it is what the step costs, and other processes' load barely moves it.

Memory, three measures; ``peak_mib`` is the CUDA allocator's peak on a GPU and the tensor peak on a CPU
(the RSS peak where the profiler is off or unavailable). Each includes the model's own tensors.

* CUDA peak / CPU peak RSS (``peak_rss_mib``): over the variant's warm-up steps (the first allocates
  gradients and optimizer states). CUDA: ``torch.cuda.max_memory_allocated`` (stats reset after the
  build) minus what was allocated before the build. CPU: the model's tensor bytes (exact) + how far the
  resident set size rose during the steps: the kernel's high-water mark (VmHWM) is reset through
  /proc/self/clear_refs after the build and read after the steps, minus VmRSS after the build (heap
  trimmed), so whatever loading left in the heap is not charged; glibc's mmap threshold is pinned at
  64 KiB during these spans so freed tensors go back to the OS (``ru_maxrss`` from
  ``resource.getrusage`` cannot be reset, so it cannot separate variants in one process). RSS also
  counts Python objects and moves by tens of KiB with the heap's state. The threshold is raised back to
  32 MiB while timing (page-faulting every activation in again would slow every step).
* tensor peak (CPU, ``tensor_peak: true``): peak bytes of live tensors during one extra untimed training
  step, from torch's memory profiler timeline: the CPU counterpart of ``max_memory_allocated``, exact and
  blind to Python objects and allocator noise (slow to analyse: ~20 s per variant on SmolLM2).
* saved activations (``saved_activations_mib``): bytes autograd keeps for backward in one training
  forward (``torch.autograd.graph.saved_tensors_hooks``, unique storages, weights excluded): exact and
  load-independent. Under gradient checkpointing it sees only what is saved outside the checkpointed
  blocks.

A primer step on each kind of model (``primer``) runs first, so one-off initialisation (kernels, lazy
imports, thread pools) is not charged to whichever variant is measured first. On a CPU the primer models
stay alive until every variant's memory is measured: a model measured right after others were freed
shows a few MiB more RSS than the same model measured later (glibc heap behaviour), which would
penalise whichever implementation goes first.

Evaluation of all ranks: ours switches ranks in one model (``set_rank``) and runs one forward per rank;
PEFT needs one adapter per rank, so for each rank it loads a separate PEFT adapter (our export of that
rank, the same format) into the PEFT model, runs the forward and deletes it (the cost of serving r
separately trained adapters; training them would take r runs, not counted).
"""
from __future__ import annotations

import ctypes
import gc
import os
import random
import statistics
import sys
import tempfile
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import CONF_DIR, ConfigError, get, int_list
from experiments.core.schema import check
from modules.options import option

MIB = 1024 ** 2
VARIANTS = {  # name -> (implementation, NF4 base, rank mode); run in this order
    "ours_fixed": ("ours", False, "fixed"),
    "ours_dynamic": ("ours", False, "dynamic"),
    "peft_lora": ("peft", False, "fixed"),
    "ours_nf4_fixed": ("ours", True, "fixed"),
    "ours_nf4_dynamic": ("ours", True, "dynamic"),
    "peft_qlora": ("peft", True, "fixed"),
}
PAIRS = (("ours_fixed", "peft_lora"), ("ours_dynamic", "peft_lora"),
         ("ours_nf4_fixed", "peft_qlora"), ("ours_nf4_dynamic", "peft_qlora"))


# --- memory probes ------------------------------------------------------------------------------------
class MemoryProbe:
    """Peak bytes over a span, relative to a baseline taken earlier (CUDA allocator or process RSS)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.torch = torch
        self.can_reset = self.cuda or _clear_refs_works()
        if not self.cuda:
            _pin_mmap_threshold()
        else:  # cuBLAS(Lt) takes its workspaces from the caching allocator on first use: take them before
            for dtype in (torch.float32, torch.bfloat16):  # any baseline, or the first variant is charged them
                x = torch.ones(64, 64, device=device, dtype=dtype, requires_grad=True)
                (x @ x).sum().backward()
            torch.cuda.synchronize()

    def current(self) -> int:
        if self.cuda:
            return self.torch.cuda.memory_allocated()
        try:
            return _proc_status("VmRSS")
        except OSError:  # no /proc (not Linux): peaks are then the process maximum, not per variant
            return 0

    def reset_peak(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        elif self.can_reset:
            _trim_heap()
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated()
        if self.can_reset:
            return _proc_status("VmHWM")
        from experiments.core.callbacks import process_peak_rss_bytes

        return process_peak_rss_bytes()  # cannot be reset

    def timing_mode(self) -> None:
        if not self.cuda:
            _pin_mmap_threshold(32 * 1024 * 1024, 1024 ** 3)

    def memory_mode(self) -> None:
        if not self.cuda:
            _pin_mmap_threshold(64 * 1024, 128 * 1024)

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
        else:
            _trim_heap()


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _clear_refs_works() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status("VmHWM")
        return True
    except OSError:
        return False


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _pin_mmap_threshold(nbytes: int = 64 * 1024, trim: int = 128 * 1024) -> None:
    """glibc M_MMAP_THRESHOLD: allocations above it are mmapped and unmapped on free (RSS then tracks live
    tensors); M_TRIM_THRESHOLD: free heap top above it goes back to the OS. 64 KiB / 128 KiB while
    measuring memory; 32 MiB (glibc's own ceiling) / 1 GiB while timing, so activations are recycled from
    the heap instead of page-faulted in again on every step."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, trim)    # M_TRIM_THRESHOLD


def _trim_heap() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# --- building the models ------------------------------------------------------------------------------
def _nf4_config(b: DictConfig):
    import torch
    from transformers import BitsAndBytesConfig

    from modules.hf_model import torch_dtype

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=bool(b.quantization.double_quant),
                              bnb_4bit_compute_dtype=torch_dtype(b.quantization.compute_dtype),
                              bnb_4bit_quant_storage=torch.uint8)


def build_base(b: DictConfig, nf4: bool):
    """The frozen base, fresh: from the saved weights (``build: saved``, via load_causal_lm, the path a
    user takes) or built directly on the device from the config (``build: direct``, big random models)."""
    import torch

    from modules.hf_model import load_causal_lm, quantize_nf4_, resolve, torch_dtype

    m = b.model
    random_config = OmegaConf.to_container(m.random_config, resolve=True) if m.get("random_config") else None
    if b.build == "saved":
        path = resolve(str(m.name_or_path), random_config)
        model, _ = load_causal_lm(path, m.dtype, _nf4_config(b) if nf4 else None, bool(m.gradient_checkpointing),
                                  m.get("attn_implementation"), device_map=b.device if nf4 else None)
        return model.to(b.device) if not nf4 else model
    from transformers import AutoConfig, AutoModelForCausalLM

    name = str(m.name_or_path)
    if not name.startswith("random:"):
        raise ConfigError(f"benchmark.build=direct needs benchmark.model.name_or_path=random:<arch>, got {name!r}")
    config = AutoConfig.for_model(name[len("random:"):], **(random_config or {}))
    torch.manual_seed(int(b.seed))
    with torch.device(b.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(m.dtype),
                                                 attn_implementation=m.get("attn_implementation") or "sdpa")
    if nf4:
        quantize_nf4_(model, torch_dtype(b.quantization.compute_dtype), bool(b.quantization.double_quant))
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def attach(model, impl: str, b: DictConfig):
    """Our nested LoRA (injected in place) or PEFT's LoRA, same targets, rank, alpha and dropout."""
    targets = list(b.model.targets)
    if impl == "ours":
        from modules.adapters.nested_lora import inject_nested_lora

        inject_nested_lora(model, targets, int(b.r_max), float(b.alpha), float(b.dropout))
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(b.r_max), lora_alpha=float(b.alpha), lora_dropout=float(b.dropout),
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@dataclass
class Family:
    """One built model (implementation x base) and its optimizer; ours serves a fixed and a dynamic mode."""

    impl: str
    nf4: bool
    model: Any
    optimizer: Any
    baseline: int           # memory before the build (CPU: RSS after it, less the model's tensor bytes)
    r_max: int = 0
    model_bytes: int = 0    # the model's own tensors (parameters, buffers, quantization states)


@dataclass
class Variant:
    name: str
    family: Family
    mode: str
    sampler: Any = None
    times: list[float] = field(default_factory=list)
    peak: int | None = None
    saved: int | None = None
    tensor_peak: int | None = None
    trainable: int = 0
    ranks: list[int] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU seconds per step (warm-up included)


# --- the measurements ---------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def train_step(v: Variant, batch: dict, device: str) -> float:
    """One optimizer step; returns wall seconds (device-synchronised) and appends the process CPU seconds
    to ``v.cpu_times``. A dynamic step's rank draw and switch are part of its time; putting a shared model
    back to r_max for a fixed step is not."""
    from modules.adapters.nested_lora import set_rank

    f = v.family
    if f.impl == "ours" and v.mode == "fixed":
        set_rank(f.model, int(f.r_max))
        v.ranks.append(int(f.r_max))
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    if f.impl == "ours" and v.mode == "dynamic":
        rank = v.sampler.submodels(len(v.ranks))[0]["rank"]  # the variant's own step count: same draws on any base
        set_rank(f.model, rank)
        v.ranks.append(rank)
    loss = f.model(**batch).loss
    loss.backward()
    f.optimizer.step()
    f.optimizer.zero_grad(set_to_none=True)
    _sync(device)
    v.cpu_times.append(time.process_time() - cpu_start)
    return time.perf_counter() - start


def saved_activation_bytes(v: Variant, batch: dict) -> int:
    """Bytes autograd keeps for the backward of one training forward (unique storages, weights excluded):
    exact and independent of the machine's load, unlike a timed peak. Runs forward + backward, no step."""
    import torch

    from modules.adapters.nested_lora import set_rank

    f = v.family
    if f.impl == "ours":
        set_rank(f.model, v.sampler.submodels(len(v.ranks))[0]["rank"] if v.mode == "dynamic" else f.r_max)
    weights = {t.untyped_storage().data_ptr() for t in [*f.model.parameters(), *f.model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() != 0:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = f.model(**batch).loss
    loss.backward()
    f.optimizer.zero_grad(set_to_none=True)
    return sum(kept.values())


def tensor_peak_bytes(v: Variant, batch: dict, device: str) -> int | None:
    """Peak bytes of live tensors during one (untimed) training step, from torch's memory profiler: the
    CPU counterpart of ``torch.cuda.max_memory_allocated``, exact and blind to Python objects and to the
    allocator. None where torch's (private) memory timeline is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        train_step(v, batch, device)
    try:
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    except Exception:  # noqa: BLE001 - private API: degrade to "not measured"
        return None
    return int(max(sum(s) for s in sizes)) if sizes else None


def make_batch(b: DictConfig, vocab: int, device: str) -> dict:
    import torch

    gen = torch.Generator().manual_seed(int(b.seed))
    ids = torch.randint(0, vocab, (int(b.batch_size), int(b.seq_len)), generator=gen).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def model_tensor_bytes(model) -> int:
    """Bytes of the model's own tensors: parameters, buffers and bitsandbytes quantization states
    (unique storages, so tied weights count once)."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:  # NF4: absmax, code, offset; double quant: state2 likewise
            tensors += [t for t in (state.absmax, state.code, getattr(state, "offset", None)) if torch.is_tensor(t)]
            state = getattr(state, "state2", None)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _family(b: DictConfig, impl: str, nf4: bool, probe: MemoryProbe):
    import torch

    probe.release()
    baseline = probe.current()
    torch.manual_seed(int(b.seed))
    model = attach(build_base(b, nf4), impl, b)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(b.lr), betas=(0.9, 0.999), weight_decay=0.0)
    fam = Family(impl, nf4, model, optimizer, baseline, int(b.r_max), model_bytes=model_tensor_bytes(model))
    if not probe.cuda:  # RSS: what loading left in the heap is no part of training (see the module docstring)
        probe.release()
        fam.baseline = probe.current() - fam.model_bytes
    return fam


def _sampler(b: DictConfig):
    from modules.submodel import SubModelSpace, UniformSampler

    return UniformSampler(SubModelSpace({"rank": range(1, int(b.r_max) + 1)}), seed=int(b.seed))


# --- evaluation of every rank -------------------------------------------------------------------------
def export_ranks(ours: Family, ranks: list[int], folder: Path) -> None:
    """Each rank as its own PEFT adapter folder (what r separately trained adapters would be)."""
    from modules.adapters.nested_lora import export_peft_adapter

    for r in ranks:
        export_peft_adapter(ours.model, r, folder / f"rank_{r}")


def eval_ours(ours: Family, ranks: list[int], inputs: dict, device: str) -> float:
    """Seconds for one forward per rank, switching ranks in the one model."""
    import torch

    from modules.adapters.nested_lora import set_rank

    ours.model.eval()
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for r in ranks:
            set_rank(ours.model, r)
            ours.model(**inputs)
    _sync(device)
    seconds = time.perf_counter() - start
    ours.model.train()
    return seconds


def eval_peft(peft: Family, ranks: list[int], folder: Path, inputs: dict, device: str) -> float:
    """Seconds for loading each rank's PEFT adapter, one forward with it, and unloading it."""
    import torch

    peft.model.eval()
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for r in ranks:
            name = f"rank_{r}"
            peft.model.load_adapter(str(folder / name), adapter_name=name)
            peft.model.set_adapter(name)
            peft.model(**inputs)
            peft.model.set_adapter("default")
            peft.model.delete_adapter(name)
    _sync(device)
    seconds = time.perf_counter() - start
    peft.model.train()
    return seconds


def _eval_kind(b: DictConfig, ours: Family | None, peft: Family | None, batch: dict, folder: Path,
               device: str, result: dict) -> None:
    """Fill result[...] with median seconds over ``eval_repeats`` (ours and PEFT alternate)."""
    ranks = eval_ranks(b)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for _ in range(int(b.eval_repeats)):
        if ours is not None:
            times["ours"].append(eval_ours(ours, ranks, inputs, device))
        if peft is not None and (folder / f"rank_{ranks[-1]}").is_dir():
            times["peft"].append(eval_peft(peft, ranks, folder, inputs, device))
    for who, values in times.items():
        if values:
            result[who] = statistics.median(values)


def eval_ranks(b: DictConfig) -> list[int]:
    return int_list(b, "eval_ranks", 1, int(b.r_max)) or list(range(1, int(b.r_max) + 1))


# --- the run ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BenchmarkModelSchema:
    """``benchmark.model``: the model every variant adapts (conf/benchmark/cpu_tiny.yaml)."""
    yaml: ClassVar[str] = "benchmark/cpu_tiny:model"
    closed: ClassVar[bool] = True
    name_or_path: str = "random:llama"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False
    targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                min_len=1)
    random_config: Optional[dict] = option({"vocab_size": 260, "hidden_size": 64, "intermediate_size": 128,
                                            "num_hidden_layers": 2, "num_attention_heads": 4,
                                            "num_key_value_heads": 2, "max_position_embeddings": 512})


@dataclasses.dataclass
class BenchmarkQuantizationSchema:
    yaml: ClassVar[str] = "benchmark/cpu_tiny:quantization"
    closed: ClassVar[bool] = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    double_quant: bool = True


@dataclasses.dataclass
class LoraBenchmarkSchema:
    """``benchmark`` for ``kind: lora`` (conf/benchmark/cpu_tiny.yaml, where each option is described)."""
    yaml: ClassVar[str] = "benchmark/cpu_tiny"
    closed: ClassVar[bool] = True
    kind: Literal["lora"] = "lora"
    model: dict = option(dataclasses.asdict(BenchmarkModelSchema()))  # its options: BenchmarkModelSchema
    build: Literal["saved", "direct"] = "saved"
    device: str = "cpu"  # cpu | cuda | cuda:<n> (checked in validate)
    threads: Optional[int] = option(1, min=1)
    seed: int = option(0, min=0)
    variants: list[Literal[tuple(VARIANTS)]] = option(["ours_dynamic", "ours_fixed", "peft_lora", "ours_nf4_dynamic", "ours_nf4_fixed", "peft_qlora"],
                                                    min_len=1)  # type: ignore[valid-type]
    batch_size: int = option(4, min=1)
    seq_len: int = option(128, min=1)
    r_max: int = option(8, min=1)
    alpha: float = option(16, above=0)
    dropout: float = option(0.05, min=0, below=1)
    lr: float = option(2e-4, min=0)
    warmup: int = option(5, min=1)  # the first step allocates the optimizer states: never timed
    steps: int = option(40, min=1)
    interleave: bool = True
    primer: Literal["all", "base", "none"] = "all"
    quantization: dict = option(dataclasses.asdict(BenchmarkQuantizationSchema()))  # BenchmarkQuantizationSchema
    tensor_peak: bool = True
    eval_ranks: Optional[list[int]] = option(None, min=1, min_len=1)  # null = 1..r_max
    eval_repeats: int = option(5, min=1)
    peft_eval: Literal["load", "none"] = "load"


def validate(b: DictConfig) -> None:
    """The schemas above (one ``error:`` line naming ``benchmark.<key>``), then what they cannot say alone."""
    root = OmegaConf.create({"benchmark": b})
    check(root, "benchmark", LoraBenchmarkSchema)
    check(root, "benchmark.model", BenchmarkModelSchema)
    check(root, "benchmark.quantization", BenchmarkQuantizationSchema)
    int_list(b, "eval_ranks", 1, int(b.r_max))  # each rank within r_max
    device = str(b.device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"benchmark.device={device!r} but no CUDA device is visible; use a cpu_* benchmark")
    elif device != "cpu":
        raise ConfigError(f"benchmark.device={device!r}: valid choices are cpu, cuda, cuda:<n>")


def run_benchmark(b: DictConfig, log=print) -> dict[str, Any]:
    """Every variant in this process; returns the results written to ``benchmark.json``."""
    import torch

    validate(b)
    if get(b, "threads"):
        torch.set_num_threads(int(b.threads))
    device = str(b.device)
    probe = MemoryProbe(device)
    names = [n for n in VARIANTS if n in set(b.variants)]  # VARIANTS' order: base kind by base kind
    kinds = sorted({VARIANTS[n][1] for n in names})
    profile_tensors = bool(get(b, "tensor_peak")) and not device.startswith("cuda")
    started = time.perf_counter()

    # Primer: one step on each kind of model (``primer: all``: every implementation x base kind; ``base``:
    # one per base kind), then freed, so one-off initialisation (kernels, lazy imports, thread pools,
    # allocator pools) is not charged to whichever variant is measured first.
    primed = sorted({VARIANTS[n][:2] for n in names}) if b.primer == "all" else [
        ("peft" if any(VARIANTS[n][:2] == ("peft", nf4) for n in names) else "ours", nf4) for nf4 in kinds]
    primers = []  # CPU: kept alive until the memory spans are done; a family measured right after others
    for impl, nf4 in primed if b.primer != "none" else []:  # were freed shows a few MiB more RSS
        fam = _family(b, impl, nf4, probe)
        train_step(Variant("primer", fam, "fixed"), make_batch(b, fam.model.config.vocab_size, device), device)
        if b.interleave and not probe.cuda:
            primers.append(fam)
        del fam
    probe.release()
    log(f"primer: {time.perf_counter() - started:.1f}s")

    families: dict[tuple[str, bool], Family] = {}
    variants: list[Variant] = []
    evals: dict[str, dict[str, float]] = {}
    batch: dict | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            impl, nf4, mode = VARIANTS[name]
            if (impl, nf4) not in families:
                if not b.interleave:
                    _finish_sequential(b, families, batch, Path(tmp), device, evals, probe)
                probe.memory_mode()
                families[(impl, nf4)] = _family(b, impl, nf4, probe)
            fam = families[(impl, nf4)]
            batch = batch or make_batch(b, fam.model.config.vocab_size, device)
            v = Variant(name, fam, mode, _sampler(b) if mode == "dynamic" else None,
                        trainable=sum(p.numel() for p in fam.model.parameters() if p.requires_grad))
            probe.memory_mode()
            probe.reset_peak()  # the span is this variant's steps (the build's own transient peak is not training)
            for _ in range(int(b.warmup)):
                train_step(v, batch, device)
            v.peak = probe.peak() - fam.baseline
            v.saved = saved_activation_bytes(v, batch)
            if not b.interleave:
                probe.timing_mode()
                v.times = [train_step(v, batch, device) for _ in range(int(b.steps))]
                if profile_tensors:  # after this variant's RSS span: the profiler's own memory stays out of it
                    v.tensor_peak = tensor_peak_bytes(v, batch, device)
            variants.append(v)
            log(f"{name}: peak {v.peak / MIB:.1f} MiB, saved activations {v.saved / MIB:.2f} MiB" +
                (f", tensor peak {v.tensor_peak / MIB:.3f} MiB" if v.tensor_peak else "") +
                (f", median step {statistics.median(v.times) * 1e3:.1f} ms" if v.times else ""))
        primers.clear()
        if b.interleave:
            for v in variants if profile_tensors else []:  # after every RSS span (the profiler allocates too)
                v.tensor_peak = tensor_peak_bytes(v, batch, device)
            probe.timing_mode()
            rng = random.Random(int(b.seed))
            for nf4 in kinds:  # one base kind at a time, so no variant pays for switching models' kind
                group = [v for v in variants if v.family.nf4 == nf4]
                for v in group:  # one untimed step each: back to warm after the memory phase
                    train_step(v, batch, device)
                for _ in range(int(b.steps)):
                    for v in rng.sample(group, len(group)):  # a fresh order each round: no position bias
                        v.times.append(train_step(v, batch, device))
            for nf4 in kinds:
                ours, peft = families.get(("ours", nf4)), families.get(("peft", nf4))
                folder = Path(tmp) / ("nf4" if nf4 else "base")
                if ours is not None and peft is not None and b.peft_eval == "load":
                    export_ranks(ours, eval_ranks(b), folder)
                _eval_kind(b, ours, peft, batch, folder, device, evals.setdefault("nf4" if nf4 else "base", {}))
        else:
            _finish_sequential(b, families, batch, Path(tmp), device, evals, probe)
    for fam in families.values():
        fam.model = fam.optimizer = None
    families.clear()
    probe.release()
    return collect(b, variants, evals, time.perf_counter() - started)


def _finish_sequential(b, families: dict, batch, tmp: Path, device: str, evals: dict, probe: MemoryProbe) -> None:
    """Sequential mode: evaluate the family that is done (ours exports its ranks for PEFT), then free it."""
    for (impl, nf4), fam in list(families.items()):
        folder = tmp / ("nf4" if nf4 else "base")
        result = evals.setdefault("nf4" if nf4 else "base", {})
        if impl == "ours":
            if b.peft_eval == "load":
                export_ranks(fam, eval_ranks(b), folder)
            _eval_kind(b, fam, None, batch, folder, device, result)
        elif b.peft_eval == "load":
            _eval_kind(b, None, fam, batch, folder, device, result)
        fam.model = fam.optimizer = None  # the variants keep their Family: drop the model itself
        del families[(impl, nf4)], fam
    probe.release()


def collect(b: DictConfig, variants: list[Variant], evals: dict, elapsed: float) -> dict[str, Any]:
    tokens = int(b.batch_size) * int(b.seq_len)
    out: dict[str, Any] = {
        "setup": {k: OmegaConf.to_container(b, resolve=True)[k] for k in
                  ("device", "batch_size", "seq_len", "r_max", "alpha", "dropout", "warmup", "steps", "build",
                   "interleave")},
        "model": str(b.model.name_or_path), "variants": {}, "ratios": {}, "eval_all_ranks": {},
        "elapsed_s": elapsed, "machine": _machine(str(b.device)),
    }
    out["setup"]["eval_ranks"] = eval_ranks(b)
    cuda = str(b.device).startswith("cuda")
    for v in variants:
        step = statistics.median(v.times)
        if cuda:
            peak, source = v.peak, "torch.cuda.max_memory_allocated"
        elif v.tensor_peak:
            peak, source = v.tensor_peak, "live tensors (torch memory profiler)"
        else:
            peak, source = v.peak, "resident set size"
        out["variants"][v.name] = {
            "step_s_median": step, "step_s_min": min(v.times), "step_s_all": v.times,
            "cpu_s_median": statistics.median(v.cpu_times[-len(v.times):]),  # timed steps only
            "tokens_per_s": tokens / step, "peak_mib": peak / MIB, "peak_source": source,
            "peak_rss_mib": None if cuda else v.peak / MIB, "model_mib": v.family.model_bytes / MIB,
            "saved_activations_mib": v.saved / MIB,
            "trainable_params": v.trainable,
            "mean_rank": statistics.fmean(v.ranks[-len(v.times):]) if v.ranks else int(b.r_max),  # timed steps
        }
    got = out["variants"]
    for ours, peft in PAIRS:
        if ours in got and peft in got:
            out["ratios"][f"{ours}/{peft}"] = {
                "step_time": got[ours]["step_s_median"] / got[peft]["step_s_median"],
                "step_time_min": got[ours]["step_s_min"] / got[peft]["step_s_min"],
                "step_cpu_time": got[ours]["cpu_s_median"] / got[peft]["cpu_s_median"],
                # median over rounds of ours_i / peft_i: in interleaved runs both ran in the same round
                "step_time_paired": statistics.median(o / p for o, p in zip(got[ours]["step_s_all"],
                                                                            got[peft]["step_s_all"])),
                "peak_memory": _ratio(got[ours]["peak_mib"], got[peft]["peak_mib"]),
                "peak_memory_diff_kib": (got[ours]["peak_mib"] - got[peft]["peak_mib"]) * 1024,  # ours - PEFT
                "peak_rss": _ratio(got[ours]["peak_rss_mib"], got[peft]["peak_rss_mib"]),
                "saved_activations": _ratio(got[ours]["saved_activations_mib"], got[peft]["saved_activations_mib"]),
            }
    for kind, result in evals.items():
        if result:
            entry = {f"{who}_s": s for who, s in result.items()}
            if "ours" in result and "peft" in result:
                entry["ratio"] = result["ours"] / result["peft"]
            out["eval_all_ranks"][kind] = entry
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _machine(device: str) -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    for pkg in ("transformers", "peft", "bitsandbytes"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - informative only
            info[pkg] = None
    return info


def format_tables(result: dict[str, Any]) -> str:
    from experiments.results.files import markdown_table

    s = result["setup"]
    head = (f"Benchmark: {result['model']} on {s['device']}, batch {s['batch_size']} x seq {s['seq_len']}, "
            f"r_max {s['r_max']}, median of {s['steps']} steps after {s['warmup']} warm-up "
            f"(load {tuple(round(x, 2) for x in result['machine'].get('loadavg', ()))})")
    rows = [[name, v["step_s_median"] * 1e3, v["step_s_min"] * 1e3, v["cpu_s_median"] * 1e3, v["tokens_per_s"],
             v["peak_mib"], v["peak_rss_mib"], v["saved_activations_mib"], v["trainable_params"], v["mean_rank"]]
            for name, v in result["variants"].items()]
    table = markdown_table(["variant", "step ms (median)", "step ms (min)", "CPU ms (median)", "tokens/s (median)",
                            "peak MiB", "peak RSS MiB", "saved activations MiB", "trainable", "mean rank"], rows)
    ratios = markdown_table(["ours / PEFT", "step time (median)", "step time (paired)", "step time (min)",
                             "step CPU time", "peak memory", "peak ours - PEFT (KiB)", "peak RSS",
                             "saved activations"],
                            [[k, r["step_time"], r["step_time_paired"], r["step_time_min"], r["step_cpu_time"],
                              r["peak_memory"], round(r["peak_memory_diff_kib"], 1), r["peak_rss"],
                              r["saved_activations"]] for k, r in result["ratios"].items()])
    source = next(iter(result["variants"].values()))["peak_source"]
    lines = [head, "", table, "", f"peak MiB: {source}, per step, model included", "", ratios]
    if result["eval_all_ranks"]:
        evals = markdown_table(["base", "ours: switch ranks (s)", "PEFT: load adapter per rank (s)", "ours / PEFT"],
                               [[k, e.get("ours_s"), e.get("peft_s"), e.get("ratio")]
                                for k, e in result["eval_all_ranks"].items()])
        lines += ["", f"Evaluation of ranks {s['eval_ranks']} (one forward each):", "", evals]
    return "\n".join(lines)


# --- entry points -------------------------------------------------------------------------------------
def benchmark_node(cfg: DictConfig) -> DictConfig:
    """cfg.benchmark, or conf/benchmark/cpu_tiny.yaml when the root config does not compose the group."""
    node = get(cfg, "benchmark")
    if node is None:
        node = load_yaml(CONF_DIR / "benchmark" / "cpu_tiny.yaml")
    if get(node, "threads") is None and get(cfg, "threads"):
        node = OmegaConf.merge(node, {"threads": get(cfg, "threads")})
    return node


def benchmark_task(cfg: DictConfig) -> dict[str, Any]:
    """task=benchmark: run, print the tables, write benchmark.json and benchmark.md in the run folder."""
    from experiments.results.files import write_json
    from experiments.core.runtime import run_dir_of

    b = benchmark_node(cfg)
    validate(b)
    run_dir = run_dir_of()
    result = run_benchmark(b)
    tables = format_tables(result)
    write_json(run_dir / "benchmark.json", result)
    (run_dir / "benchmark.md").write_text(tables + "\n")
    print("\n" + tables)
    return result


def load_yaml(path: Path) -> DictConfig:
    """A benchmark yaml with its ``defaults`` (sibling files of the same group) merged, as Hydra would."""
    node = OmegaConf.load(path)
    parents = [d for d in node.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*[load_yaml(path.with_name(f"{d}.yaml")) for d in parents], node)


def main(argv: list[str]) -> None:
    """Without Hydra (e.g. on a GPU image that lacks it):
    ``python -m experiments.benchmarks.lora conf/benchmark/gpu_llama2_7b.yaml [key=value ...] [out=DIR]``."""
    if not argv:
        sys.exit(main.__doc__)
    b = OmegaConf.merge(load_yaml(Path(argv[0])),
                        OmegaConf.from_dotlist([a for a in argv[1:] if not a.startswith("out=")]))
    out = Path(next((a[4:] for a in argv[1:] if a.startswith("out=")), os.environ.get("OUT", ".")))
    out.mkdir(parents=True, exist_ok=True)
    from experiments.results.files import write_json

    try:
        result = run_benchmark(b)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    tables = format_tables(result)
    write_json(out / "benchmark.json", result)
    (out / "benchmark.md").write_text(tables + "\n")
    print("\n" + tables)


if __name__ == "__main__":
    main(sys.argv[1:])
