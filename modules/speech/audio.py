"""Audio I/O at Whisper's 16 kHz: read any soundfile-readable file, resample with scipy if needed."""
from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000


def resample(wave: np.ndarray, sr: int, target: int = SAMPLE_RATE, warn: bool = True) -> np.ndarray:
    """Polyphase resampling (scipy ``resample_poly``) to ``target`` Hz; warns, since it costs time and
    changes the signal slightly (resample once when preparing data, not per epoch)."""
    if sr == target:
        return wave
    from scipy.signal import resample_poly

    if warn:
        warnings.warn(f"audio at {sr} Hz resampled to {target} Hz", stacklevel=2)
    ratio = Fraction(target, sr)
    return resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(path: str | Path, target: int = SAMPLE_RATE, warn: bool = True) -> np.ndarray:
    """Mono float32 waveform at ``target`` Hz (channels averaged)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(wave.mean(axis=1), sr, target, warn=warn)
