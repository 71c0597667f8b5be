"""Test-time corruptions ("in the wild"): additive noise at an SNR, and room reverberation.

A ``Condition`` is a small value with string keys, parsed from and printed as e.g. ``clean``,
``snr=10,noise=white``, ``rt60=0.6``, ``rt60=0.3,snr=5,noise=babble``, ``rir=file``. Its ``key``
(``snr10_white``, ``rt60_0.6``) is a stable metric suffix: ``test/acc@condition=snr10_white``.

``Corruptor.apply(wave, condition, utt_id)`` is deterministic: the random stream is seeded from
(seed, utterance id, condition key), so the same utterance under the same condition and seed is
corrupted identically in every run and process. Reverberation is applied first, then noise (noise in
a room reaches the microphone mostly direct), and the SNR is measured against the reverberant speech.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from modules.speech.audio import SAMPLE_RATE, load_audio

NOISE_TYPES = ("white", "pink", "babble", "file")
RIR_TYPES = ("synthetic", "file")
KEYS = ("snr", "noise", "rt60", "rir")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class ConditionError(ValueError):
    """A condition string or setting that cannot be used (message names the key and the choices)."""


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Condition:
    snr: float | None = None     # dB; None = no additive noise
    noise: str | None = None     # white | pink | babble | file (a random file from noise_dir)
    rt60: float | None = None    # s; a synthetic exponentially decaying impulse response
    rir: str | None = None       # synthetic | file (a random impulse response from rir_dir)

    def __post_init__(self):
        if (self.snr is None) != (self.noise is None):
            raise ConditionError(f"condition {self}: 'snr' and 'noise' go together (noise one of {', '.join(NOISE_TYPES)})")
        if self.noise is not None and self.noise not in NOISE_TYPES:
            raise ConditionError(f"unknown noise {self.noise!r}; choose one of: {', '.join(NOISE_TYPES)}")
        if self.rir is not None and self.rir not in RIR_TYPES:
            raise ConditionError(f"unknown rir {self.rir!r}; choose one of: {', '.join(RIR_TYPES)}")
        if self.rir == "synthetic" and self.rt60 is None:
            raise ConditionError("rir=synthetic needs rt60=<seconds>")
        if self.rt60 is not None and self.rt60 <= 0:
            raise ConditionError(f"rt60 must be > 0 s, got {self.rt60}")

    @classmethod
    def parse(cls, text: "str | Condition") -> "Condition":
        """``clean`` / ``snr=10,noise=white`` / ``rt60=0.6`` / ... -> Condition; one-line errors otherwise."""
        if isinstance(text, Condition):
            return text
        text = str(text).strip()
        if text in ("", "clean"):
            return cls()
        fields: dict = {}
        for part in text.split(","):
            key, sep, value = part.strip().partition("=")
            if not sep or key not in KEYS:
                raise ConditionError(f"unknown condition {part.strip()!r} in {text!r}; use 'clean' or key=value with keys: {', '.join(KEYS)}")
            if key in ("snr", "rt60"):
                try:
                    fields[key] = float(value)
                except ValueError:
                    raise ConditionError(f"condition key {key!r} needs a number, got {value!r} in {text!r}") from None
            else:
                fields[key] = value
        if "snr" in fields and "noise" not in fields:
            fields["noise"] = "white"
        if "rt60" in fields and "rir" not in fields:
            fields["rir"] = "synthetic"
        return cls(**fields)

    @property
    def is_clean(self) -> bool:
        return self.snr is None and self.rt60 is None and self.rir is None

    def __str__(self) -> str:
        if self.is_clean:
            return "clean"
        parts = []
        if self.rt60 is not None:
            parts.append(f"rt60={_num(self.rt60)}")
        if self.rir == "file":
            parts.append("rir=file")
        if self.snr is not None:
            parts += [f"snr={_num(self.snr)}", f"noise={self.noise}"]
        return ",".join(parts)

    @property
    def key(self) -> str:
        """Stable metric suffix: ``clean``, ``snr10_white``, ``rt60_0.6``, ``rirfile_snr5_babble``."""
        if self.is_clean:
            return "clean"
        parts = []
        if self.rt60 is not None:
            parts.append(f"rt60_{_num(self.rt60)}")
        if self.rir == "file":
            parts.append("rirfile")
        if self.snr is not None:
            parts.append(f"snr{_num(self.snr)}_{self.noise}")
        return "_".join(parts)


def default_grid(noise: str = "white") -> list[Condition]:
    """clean; SNR 20 / 10 / 5 / 0 dB of ``noise``; synthetic reverberation at RT60 0.3 / 0.6 / 0.9 s."""
    return ([Condition()] + [Condition(snr=s, noise=noise) for s in (20.0, 10.0, 5.0, 0.0)]
            + [Condition(rt60=t, rir="synthetic") for t in (0.3, 0.6, 0.9)])


# --- the signal pieces ------------------------------------------------------------------------

def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def snr_db(speech: np.ndarray, noise: np.ndarray) -> float:
    return 10.0 * np.log10(power(speech) / power(noise))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """speech + scale * noise with scale = sqrt(Ps / (Pn * 10^(snr/10))), so 10 log10(Ps / Pscaled) = snr."""
    if len(noise) != len(speech):
        raise ValueError(f"noise has {len(noise)} samples, speech {len(speech)}: fit it first (fit_length)")
    ps, pn = power(speech), power(noise)
    if pn == 0 or ps == 0:
        return speech.copy()
    scale = np.sqrt(ps / (pn * 10.0 ** (snr / 10.0)))
    return (speech + scale * noise).astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power spectrum: shape white noise's spectrum by 1/sqrt(f) (DC gets the lowest bin's gain)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / (x.std() + 1e-12)).astype(np.float32)


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random n-sample window of x, tiling x first when it is shorter."""
    if len(x) < n:
        x = np.tile(x, int(np.ceil(n / len(x))) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start:start + n]


def babble_noise(n: int, rng: np.random.Generator, pool: Mapping[str, np.ndarray], exclude: str | None,
                 talkers: int = 5) -> np.ndarray:
    """Sum of ``talkers`` other utterances, each at unit power (different speakers talking at once)."""
    ids = sorted(k for k in pool if k != exclude)
    if not ids:
        raise ConditionError("babble noise needs other utterances: pass babble_pool={utt_id: wave} with >= 2 clips")
    out = np.zeros(n, dtype=np.float64)
    for k in rng.choice(ids, size=min(talkers, len(ids)), replace=False):
        clip = fit_length(np.asarray(pool[k], dtype=np.float32), n, rng)
        out += clip / np.sqrt(power(clip) + 1e-12)
    return out.astype(np.float32)


def synthetic_rir(rt60: float, rng: np.random.Generator, sr: int = SAMPLE_RATE,
                  length_factor: float = 1.2) -> np.ndarray:
    """Gaussian noise under an exponential envelope whose energy falls 60 dB in rt60 seconds:
    amplitude exp(-3 ln(10) t / rt60) -> energy 10^(-6 t / rt60). Unit energy, direct path first."""
    t = np.arange(int(length_factor * rt60 * sr)) / sr
    h = rng.standard_normal(len(t)) * np.exp(-3.0 * np.log(10.0) * t / rt60)
    h[0] = np.abs(h).max()  # a direct path so the onset is not smeared
    return (h / np.sqrt(np.sum(h ** 2))).astype(np.float32)


def energy_decay_db(h: np.ndarray) -> np.ndarray:
    """Schroeder backward-integrated energy decay curve in dB (0 dB at t=0)."""
    edc = np.cumsum(np.square(h[::-1], dtype=np.float64))[::-1]
    return 10.0 * np.log10(edc / edc[0] + 1e-300)


def estimate_rt60(h: np.ndarray, sr: int = SAMPLE_RATE, start_db: float = -5.0, stop_db: float = -35.0) -> float:
    """Fit a line to the decay curve between start_db and stop_db, extrapolate to -60 dB (T30-style)."""
    edc = energy_decay_db(h)
    idx = np.nonzero((edc <= start_db) & (edc >= stop_db))[0]
    slope, _ = np.polyfit(idx / sr, edc[idx], 1)  # dB per second (negative)
    return -60.0 / slope


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve, keep the input length (the tail past the clip is dropped), align the direct path."""
    from scipy.signal import fftconvolve

    lag = int(np.argmax(np.abs(rir)))
    return fftconvolve(wave, rir)[lag:lag + len(wave)].astype(np.float32)


def _audio_files(folder: str | Path | None, what: str) -> list[Path]:
    if folder is None:
        raise ConditionError(f"{what}=file needs a folder of audio files ({what}_dir); none given")
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise ConditionError(f"{what}_dir {folder} has no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


class Corruptor:
    """Applies Conditions deterministically. ``noise_dir`` (e.g. MUSAN's noise/) and ``rir_dir`` (real
    impulse responses) are searched recursively; ``babble_pool`` maps utterance ids to 16 kHz waves."""

    def __init__(self, seed: int = 0, noise_dir: str | Path | None = None, rir_dir: str | Path | None = None,
                 babble_pool: Mapping[str, np.ndarray] | None = None, babble_talkers: int = 5):
        self.seed = seed
        self.noise_dir, self.rir_dir = noise_dir, rir_dir
        self.babble_pool = babble_pool or {}
        self.babble_talkers = babble_talkers

    def rng(self, utt_id: str, condition: Condition) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}|{utt_id}|{condition.key}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def noise(self, n: int, kind: str, rng: np.random.Generator, utt_id: str) -> np.ndarray:
        if kind == "white":
            return white_noise(n, rng)
        if kind == "pink":
            return pink_noise(n, rng)
        if kind == "babble":
            return babble_noise(n, rng, self.babble_pool, exclude=utt_id, talkers=self.babble_talkers)
        files = _audio_files(self.noise_dir, "noise")
        return fit_length(load_audio(files[int(rng.integers(len(files)))]), n, rng)

    def apply(self, wave: np.ndarray, condition: "Condition | str", utt_id: str) -> np.ndarray:
        """16 kHz wave -> corrupted copy (same length); ``clean`` returns the input unchanged."""
        condition = Condition.parse(condition)
        wave = np.asarray(wave, dtype=np.float32)
        if condition.is_clean:
            return wave
        rng = self.rng(utt_id, condition)
        if condition.rir == "file":
            files = _audio_files(self.rir_dir, "rir")
            rir = load_audio(files[int(rng.integers(len(files)))])
            wave = reverberate(wave, rir / np.sqrt(np.sum(rir ** 2) + 1e-12))
        elif condition.rt60 is not None:
            wave = reverberate(wave, synthetic_rir(condition.rt60, rng))
        if condition.snr is not None:
            wave = mix_at_snr(wave, self.noise(len(wave), condition.noise, rng, utt_id), condition.snr)
        return wave
