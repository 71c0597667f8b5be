"""A frozen Whisper encoder that returns every hidden state (SUPERB "upstream").

``WhisperUpstream(name)`` takes an HF id (``openai/whisper-tiny`` ... ``openai/whisper-large-v3``), a
local HF folder, or the offline alias ``whisper-tiny.en`` (the package-shipped CT2 model, converted once).

``pad_to_30s`` (default on) feeds the encoder what it was trained on: 3000 mel frames, 1500 positions.
Off, a clip is padded only to a multiple of 20 ms and the position table is cut to its length: far
faster on CPU for 1-s keywords, but the top layers drift (docs/whisper_superb.md has the numbers).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 320  # one encoder frame = 20 ms: hop 160 samples per mel frame, conv2 stride 2


def resolve_whisper(name_or_path: str) -> str:
    """Offline alias -> converted local folder; local folder -> itself; anything else -> an HF id."""
    from modules.offline import resolve_model_path

    return resolve_model_path(name_or_path)


def frame_lengths(num_samples: Sequence[int], max_frames: int) -> torch.Tensor:
    """Valid encoder frames per clip: ceil(samples / 320), at most the frames the encoder produced."""
    return torch.tensor([min(math.ceil(n / FRAME_SAMPLES), max_frames) for n in num_samples], dtype=torch.long)


class WhisperUpstream(nn.Module):
    """Frozen Whisper encoder: waveforms (16 kHz) -> hidden states (L+1, B, T, C) + lengths (B,)."""

    def __init__(self, name_or_path: str = "whisper-tiny.en", pad_to_30s: bool = True,
                 dtype: str | torch.dtype = "float32"):
        super().__init__()
        from transformers import WhisperFeatureExtractor, WhisperModel

        self.name = name_or_path
        self.pad_to_30s = pad_to_30s
        path = resolve_whisper(name_or_path)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        model = WhisperModel.from_pretrained(path, dtype=dtype)
        self.encoder = model.get_encoder().eval().requires_grad_(False)  # the decoder is dropped
        self.config = model.config
        try:
            self.extractor = WhisperFeatureExtractor.from_pretrained(path)
        except OSError:  # an HF folder without preprocessor_config.json
            self.extractor = WhisperFeatureExtractor(feature_size=self.config.num_mel_bins)

    @property
    def num_layers(self) -> int:
        """Hidden states returned: the embeddings plus one per encoder layer."""
        return self.config.encoder_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    @property
    def fingerprint(self) -> str:
        """Stable id of these weights + settings (for cache keys): config, shapes and a sample of every tensor."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, default=str).encode())
        for key, t in self.encoder.state_dict().items():
            h.update(f"{key}{tuple(t.shape)}".encode())
            h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def features(self, waves: Sequence[np.ndarray]) -> torch.Tensor:
        """Log-mel features (B, n_mels, M): M = 3000 with pad_to_30s, else the longest clip's 20-ms multiple."""
        waves = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
        longest = max(len(w) for w in waves)
        if longest > self.extractor.n_samples:
            warnings.warn(f"clip of {longest / SAMPLE_RATE:.1f} s is cut to Whisper's 30 s window")
        if self.pad_to_30s:
            kwargs = dict(padding="max_length")
        else:  # a multiple of 320 samples gives an even number of mel frames -> exactly n/320 encoder frames
            target = min(FRAME_SAMPLES * math.ceil(longest / FRAME_SAMPLES), self.extractor.n_samples)
            kwargs = dict(padding="max_length", max_length=target)
        out = self.extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=True, **kwargs)
        return out.input_features  # (B, n_mels, M)

    @torch.no_grad()
    def forward(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> (hidden (L+1, B, T, C) float32, lengths (B,) in 20-ms frames).

        Same sums as HF's encoder with ``output_hidden_states`` (the last state is after the final
        LayerNorm), written out so the position table can be cut for short clips."""
        enc = self.encoder
        feats = self.features(waves).to(enc.conv1.weight.dtype).to(enc.conv1.weight.device)
        x = nn.functional.gelu(enc.conv1(feats))
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)  # (B, T, C)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        states = [x]
        for layer in enc.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        states[-1] = enc.layer_norm(x)
        hidden = torch.stack(states).float()  # (L+1, B, T, C)
        return hidden, frame_lengths([len(np.asarray(w).reshape(-1)) for w in waves], hidden.shape[2])
