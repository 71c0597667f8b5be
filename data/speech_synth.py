"""Offline synthetic stand-ins for the SUPERB utterance tasks, spoken by espeak-ng.

Real corpora (Speech Commands, Fluent Speech Commands, VoxCeleb1, IEMOCAP; ``data/speech_corpora.py``)
need downloads; these sets need only ``apt-get install espeak-ng`` and build in seconds:

| set | classes | what varies |
|---|---|---|
| ``keywords`` | 12, as Speech Commands in SUPERB: 10 words + ``_unknown_`` (10 other words) + ``_silence_`` (noise only) | voice, speed, pitch |
| ``speakers`` | 24 "speakers" = 4 accents x 6 voice variants | word, speed |
| ``emotions`` | 4 "emotions" as SSML prosody: neutral, happy (fast, high, loud), sad (slow, low, soft), angry (fast, low, loud) | voice, sentence |
| ``intents`` | (action, object, location) commands from templates, FSC-style | voice, template |

A voice is ``<accent>+<variant>`` (e.g. ``en-us+f2``). Keyword, emotion and intent splits are by voice
(test voices are never heard in training, as speakers in the real corpora); the speaker set splits by
utterance. Output is espeak's 22,050 Hz, resampled to 16 kHz. A set is built once and cached under
``${XDG_CACHE_HOME:-~/.cache}/efficient-transformers-lab/speech/<set>-<hash>/``, the hash covering the
recipe and the espeak-ng version, so the same machine always gets the same clips.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data.speech_corpora import KS_CLASSES, KS_WORDS, SpeechItem, SpeechSet
from modules.speech.audio import resample

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029")
VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4")
VOICES = tuple(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)  # 24
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
SPEEDS = (140, 180)          # words per minute
PITCHES = (35, 65)           # espeak pitch 0..99
EMOTIONS = {  # SSML prosody per class
    "neutral": dict(rate="100%", pitch="+0%", volume="100%"),
    "happy": dict(rate="125%", pitch="+35%", volume="130%"),
    "sad": dict(rate="75%", pitch="-30%", volume="60%"),
    "angry": dict(rate="120%", pitch="-15%", volume="160%"),
}
EMOTION_SENTENCES = ("the meeting starts at noon", "I put the keys on the table", "we are going home now",
                     "the train was late again", "she bought a new car", "they painted the door blue")
SPEAKER_WORDS = ("seven", "orange", "window", "river", "garden", "yellow", "morning", "pencil",
                 "basket", "candle", "doctor", "forest", "ladder", "marble", "silver", "thunder")
INTENT_SLOTS = {
    "action": ["activate", "deactivate", "increase", "decrease"],
    "object": ["lights", "music", "heat", "volume"],
    "location": ["none", "kitchen", "bedroom", "washroom"],
}
INTENT_TEMPLATES = {
    "activate": ("turn on the {object}{location}", "switch on the {object}{location}"),
    "deactivate": ("turn off the {object}{location}", "switch off the {object}{location}"),
    "increase": ("turn up the {object}{location}", "increase the {object}{location}"),
    "decrease": ("turn down the {object}{location}", "lower the {object}{location}"),
}
SETS = ("keywords", "speakers", "emotions", "intents")
ESPEAK_RATE = 22_050


class SynthError(RuntimeError):
    """espeak-ng is missing or failed (message says how to fix it)."""


def speech_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "efficient-transformers-lab" / "speech"


def espeak_version() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("espeak-ng not found: install it (`apt-get install espeak-ng`) to build the synthetic speech sets")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def voice_split(voice: str) -> str:
    """Every 8th voice is test, the next valid: 3 + 3 of the 24 voices held out, all accents covered."""
    i = VOICES.index(voice)
    return "test" if i % 8 == 0 else "valid" if i % 8 == 5 else "train"


# --- recipes: (id, label, split, speaker, espeak args, text) ------------------------------------

def _keywords():
    for w, word in enumerate(KS_WORDS + UNKNOWN_WORDS):
        label = w if w < len(KS_WORDS) else KS_CLASSES.index("_unknown_")
        for voice in VOICES:
            combos = [(s, p) for s in SPEEDS for p in PITCHES]
            if w >= len(KS_WORDS):  # unknown words: one take from every other voice -> 120 clips, ~1.25 words' worth
                if (w + VOICES.index(voice)) % 2:
                    continue
                combos = combos[(w + VOICES.index(voice)) % 4:][:1]
            for s, p in combos:
                yield f"kw/{word}/{voice}/s{s}p{p}", label, voice_split(voice), voice, ["-v", voice, "-s", str(s), "-p", str(p)], word
    for i in range(len(VOICES) * 4):  # _silence_: noise only, drawn in _render
        yield f"kw/_silence_/{i:03d}", KS_CLASSES.index("_silence_"), voice_split(VOICES[i % len(VOICES)]), "", None, ""


def _speakers():
    for v, voice in enumerate(VOICES):
        for k, word in enumerate(SPEAKER_WORDS):
            for s in SPEEDS:
                split = {0: "test", 1: "valid"}.get((k + v) % 8, "train")  # 2 of 16 words per voice each
                yield f"spk/{voice}/{word}/s{s}", v, split, voice, ["-v", voice, "-s", str(s)], word


def _emotions():
    for e, (emotion, p) in enumerate(EMOTIONS.items()):
        for voice in VOICES:
            for k, sentence in enumerate(EMOTION_SENTENCES[:3]):
                ssml = f"<speak><prosody rate='{p['rate']}' pitch='{p['pitch']}' volume='{p['volume']}'>{sentence}</prosody></speak>"
                yield f"emo/{emotion}/{voice}/{k}", e, voice_split(voice), voice, ["-m", "-v", voice], ssml


def _intents():
    for a, action in enumerate(INTENT_SLOTS["action"]):
        for o, obj in enumerate(INTENT_SLOTS["object"]):
            for l, loc in enumerate(INTENT_SLOTS["location"]):
                for v, voice in enumerate(VOICES):
                    template = INTENT_TEMPLATES[action][(o + l + v) % 2]
                    text = template.format(object=obj, location="" if loc == "none" else f" in the {loc}")
                    yield f"ic/{action}-{obj}-{loc}/{voice}", (a, o, l), voice_split(voice), voice, ["-v", voice], text


RECIPES = {"keywords": _keywords, "speakers": _speakers, "emotions": _emotions, "intents": _intents}
CLASSES = {
    "keywords": {"label": list(KS_CLASSES)},
    "speakers": {"label": list(VOICES)},
    "emotions": {"label": list(EMOTIONS)},
    "intents": {k: list(v) for k, v in INTENT_SLOTS.items()},
}


def _render(rec, tmp: Path) -> np.ndarray:
    """One recipe row -> 16 kHz float32."""
    uid, _, _, _, args, text = rec
    if args is None:  # silence: 1 s of low-level noise, seeded by the id
        rng = np.random.default_rng(int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16))
        return (rng.standard_normal(16_000) * 10 ** rng.uniform(-3.5, -2)).astype(np.float32)
    import soundfile as sf

    out = tmp / (hashlib.sha1(uid.encode()).hexdigest() + ".wav")
    res = subprocess.run(["espeak-ng", "-w", str(out), *args, text], capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file():
        raise SynthError(f"espeak-ng failed on {uid!r}: {res.stderr.strip() or 'no output'}")
    wave, sr = sf.read(str(out), dtype="float32")
    out.unlink()
    return resample(wave, sr, warn=False)  # espeak speaks at 22,050 Hz, a known conversion


def _recipe_hash(name: str, rows) -> str:
    blob = json.dumps([name, espeak_version(), [(r[0], r[4], r[5]) for r in rows]])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_synthetic(name: str, workers: int = 2) -> Path:
    """Build (once) and return the cache folder of one set: ``audio.npy`` (int16, concatenated) + ``meta.json``."""
    if name not in RECIPES:
        raise ValueError(f"unknown synthetic speech set {name!r}; choose one of: {', '.join(SETS)}")
    rows = list(RECIPES[name]())
    folder = speech_cache_root() / f"{name}-{_recipe_hash(name, rows)}"
    if (folder / "meta.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        waves = list(pool.map(lambda r: _render(r, Path(tmp)), rows))
    pcm = [np.clip(np.round(w * 32767), -32768, 32767).astype(np.int16) for w in waves]
    offsets = np.cumsum([0] + [len(p) for p in pcm]).tolist()
    staging = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    np.save(staging / "audio.npy", np.concatenate(pcm))
    meta = dict(name=name, espeak=espeak_version(), classes=CLASSES[name], offsets=offsets,
                items=[dict(id=r[0], label=r[1], split=r[2], speaker=r[3]) for r in rows])
    (staging / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(staging, folder)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def synthetic_speech(name: str) -> SpeechSet:
    """The cached set as a SpeechSet (waves in memory, 16 kHz float32)."""
    folder = build_synthetic(name)
    meta = json.loads((folder / "meta.json").read_text())
    audio = np.load(folder / "audio.npy", mmap_mode="r")
    off = meta["offsets"]
    items = [SpeechItem(m["id"], tuple(m["label"]) if isinstance(m["label"], list) else m["label"], m["split"],
                        m["speaker"], wave=(audio[off[i]:off[i + 1]] / 32768.0).astype(np.float32))
             for i, m in enumerate(meta["items"])]
    return SpeechSet(f"synthetic_{name}", meta["classes"], items)
