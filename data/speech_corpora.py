"""Loaders for the SUPERB utterance tasks in their released folder layouts (no download here).

Each returns a ``SpeechSet``: items with id, label, split, speaker and a path (audio is read lazily,
resampled to 16 kHz). The synthetic stand-ins in ``data/speech_synth.py`` return the same type.

| task | corpus | layout read |
|---|---|---|
| KS | Speech Commands v1 (12 classes: 10 words, _unknown_, _silence_) | ``<word>/<spk>_nohash_<n>.wav``, ``validation_list.txt``, ``testing_list.txt``, ``_background_noise_/`` |
| IC | Fluent Speech Commands (action, object, location) | ``data/{train,valid,test}_data.csv``, ``wavs/speakers/...`` |
| SID | VoxCeleb1 identification (1,251 speakers) | ``iden_split.txt`` (1 train / 2 dev / 3 test), ``wav/<id>/<video>/<n>.wav`` |
| ER | IEMOCAP, 4 classes (excited merged into happy), leave-one-session-out | ``Session<k>/sentences/wav/``, ``Session<k>/dialog/EmoEvaluation/*.txt`` |
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

KS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KS_CLASSES = KS_WORDS + ("_unknown_", "_silence_")
ER_CLASSES = ("neu", "hap", "ang", "sad")
ER_MERGE = {"exc": "hap"}
SAMPLE_RATE = 16_000


class DataFolderError(FileNotFoundError):
    """A corpus folder is missing, empty or not in the expected layout (one-line message)."""


@dataclass(frozen=True)
class SpeechItem:
    id: str
    label: int | tuple[int, ...]          # class index; intent: one index per slot
    split: str                            # train | valid | test
    speaker: str = ""
    path: str | None = None               # audio file, read on demand
    wave: np.ndarray | None = field(default=None, compare=False, repr=False)  # or the samples (synthetic sets)
    start: int = 0                        # sample window inside the file (silence crops of long noise files)
    length: int | None = None

    def audio(self) -> np.ndarray:
        """16 kHz mono float32."""
        if self.wave is not None:
            return self.wave
        from modules.speech.audio import load_audio

        wave = load_audio(self.path)
        return wave[self.start: None if self.length is None else self.start + self.length]


@dataclass
class SpeechSet:
    name: str
    classes: dict[str, list[str]]         # {"label": [...]} or one entry per intent slot
    items: list[SpeechItem]

    def split(self, name: str) -> list[SpeechItem]:
        found = [it for it in self.items if it.split == name]
        if not found:
            raise DataFolderError(f"{self.name}: split {name!r} is empty; splits: {sorted({i.split for i in self.items})}")
        return found

    def waves(self, name: str) -> dict[str, np.ndarray]:
        """{id: 16 kHz wave} of one split, in a fixed order (the feature cache's input)."""
        return {it.id: it.audio() for it in self.split(name)}

    def labels(self, name: str):
        import torch

        return torch.tensor([it.label for it in self.split(name)])  # (N,) or (N, slots)

    @property
    def num_classes(self) -> list[int]:
        return [len(v) for v in self.classes.values()]


def _require_dir(root: str | Path, corpus: str, expect: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir() or not any(root.iterdir()):
        raise DataFolderError(f"{corpus} folder {root} is {'empty' if root.is_dir() else 'missing'}; expected {expect}")
    return root


def _hash_fraction(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


# --- Speech Commands (KS) -----------------------------------------------------------------------

def speech_commands(root: str | Path, silence_per_split: Sequence[int] = (260, 30, 30),
                    test_root: str | Path | None = None) -> SpeechSet:
    """Speech Commands v1 in SUPERB's 12 classes. Splits from validation_list.txt / testing_list.txt
    (all else is train). ``_silence_`` items are 1-s crops of ``_background_noise_`` files, spread
    over train/valid/test in the given counts. ``test_root`` (the separate v0.01 test set with
    ``_unknown_`` / ``_silence_`` folders, as SUPERB uses) replaces the list-based test split."""
    root = _require_dir(root, "Speech Commands", "<word>/*.wav, validation_list.txt, testing_list.txt")
    lists = {}
    for split, fname in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        f = root / fname
        if not f.is_file():
            raise DataFolderError(f"Speech Commands folder {root} has no {fname}")
        lists.update({line.strip(): split for line in f.read_text().splitlines() if line.strip()})
    label = {w: i for i, w in enumerate(KS_CLASSES)}
    items = []
    for wav in sorted(root.glob("*/*.wav")):
        word = wav.parent.name
        if word.startswith("_"):
            continue
        rel = f"{word}/{wav.name}"
        split = lists.get(rel, "train")
        if test_root is not None and split == "test":
            continue
        items.append(SpeechItem(rel, label.get(word, label["_unknown_"]), split, wav.name.split("_nohash_")[0], str(wav)))
    noise = sorted((root / "_background_noise_").glob("*.wav"))
    if noise and any(silence_per_split):
        import soundfile as sf

        crops = [(f, s) for f in noise for s in range(0, sf.info(str(f)).frames - 16_000 + 1, 16_000)]
        rng = np.random.default_rng(0)
        order = rng.permutation(len(crops))
        bounds = np.cumsum([0, *silence_per_split])
        for split, lo, hi in zip(("train", "valid", "test"), bounds[:-1], bounds[1:]):
            if test_root is not None and split == "test":
                continue
            for j in order[lo:hi]:
                f, s = crops[j]
                # offsets are in the file's own samples; background files are 16 kHz in the release
                items.append(SpeechItem(f"_silence_/{f.stem}@{s}", label["_silence_"], split, "", str(f), start=s, length=16_000))
    if test_root is not None:
        test_root = _require_dir(test_root, "Speech Commands test set", "<word>/*.wav incl. _unknown_/ and _silence_/")
        for wav in sorted(test_root.glob("*/*.wav")):
            word = wav.parent.name
            items.append(SpeechItem(f"test/{word}/{wav.name}", label.get(word, label["_unknown_"]), "test", "", str(wav)))
    if not items:
        raise DataFolderError(f"Speech Commands folder {root} has no <word>/*.wav files")
    return SpeechSet("speech_commands", {"label": list(KS_CLASSES)}, items)


# --- Fluent Speech Commands (IC) ----------------------------------------------------------------

FSC_SLOTS = ("action", "object", "location")


def fluent_speech_commands(root: str | Path) -> SpeechSet:
    """FSC's ``data/{train,valid,test}_data.csv`` (path, speakerId, transcription, action, object,
    location); slot vocabularies from all three CSVs, sorted, so indices are stable."""
    root = _require_dir(root, "Fluent Speech Commands", "data/{train,valid,test}_data.csv and wavs/")
    rows = []
    for split in ("train", "valid", "test"):
        f = root / "data" / f"{split}_data.csv"
        if not f.is_file():
            raise DataFolderError(f"Fluent Speech Commands folder {root} has no data/{split}_data.csv")
        with f.open(newline="") as fh:
            rows += [(split, r) for r in csv.DictReader(fh)]
    vocab = {s: sorted({r[s] for _, r in rows}) for s in FSC_SLOTS}
    items = [SpeechItem(r["path"], tuple(vocab[s].index(r[s]) for s in FSC_SLOTS), split, r.get("speakerId", ""),
                        str(root / r["path"])) for split, r in rows]
    return SpeechSet("fluent_speech_commands", vocab, items)


# --- VoxCeleb1 identification (SID) -------------------------------------------------------------

def voxceleb1_sid(root: str | Path, split_file: str = "iden_split.txt", wav_dir: str = "wav") -> SpeechSet:
    """``iden_split.txt`` lines ``<1|2|3> id10001/<video>/<n>.wav`` -> train / valid / test."""
    root = _require_dir(root, "VoxCeleb1", f"{split_file} and {wav_dir}/<speaker>/<video>/<n>.wav")
    f = root / split_file
    if not f.is_file():
        raise DataFolderError(f"VoxCeleb1 folder {root} has no {split_file}")
    names = {"1": "train", "2": "valid", "3": "test"}
    entries = [line.split() for line in f.read_text().splitlines() if line.strip()]
    speakers = sorted({rel.split("/")[0] for _, rel in entries})
    index = {s: i for i, s in enumerate(speakers)}
    items = [SpeechItem(rel, index[rel.split("/")[0]], names[tag], rel.split("/")[0], str(root / wav_dir / rel))
             for tag, rel in entries]
    return SpeechSet("voxceleb1_sid", {"label": speakers}, items)


# --- IEMOCAP (ER) -------------------------------------------------------------------------------

_EMO_LINE = re.compile(r"^\[[\d.]+ - [\d.]+\]\s+(\S+)\s+(\S+)\s+\[")


def iemocap(root: str | Path, fold: int = 1, valid_fraction: float = 0.1) -> SpeechSet:
    """Leave-one-session-out fold ``fold`` (1..5): Session<fold> is test, the rest train (a hashed
    ``valid_fraction`` of it is valid). Only neu / hap (+exc) / ang / sad are kept, as in SUPERB."""
    if fold not in range(1, 6):
        raise ValueError(f"IEMOCAP fold must be 1..5 (the held-out session), got {fold}")
    root = _require_dir(root, "IEMOCAP", "Session1..5/sentences/wav and Session1..5/dialog/EmoEvaluation")
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise DataFolderError(f"IEMOCAP folder {root} has no Session1..Session5 folders")
    items = []
    for sess in sessions:
        k = int(sess.name[-1])
        for ev in sorted((sess / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in ev.read_text(errors="replace").splitlines():
                m = _EMO_LINE.match(line)
                if not m:
                    continue
                utt, emo = m.group(1), ER_MERGE.get(m.group(2), m.group(2))
                if emo not in ER_CLASSES:
                    continue
                wav = sess / "sentences" / "wav" / utt.rsplit("_", 1)[0] / f"{utt}.wav"
                split = "test" if k == fold else ("valid" if _hash_fraction(utt) < valid_fraction else "train")
                items.append(SpeechItem(utt, ER_CLASSES.index(emo), split, utt[:5] + utt.split("_")[-1][0], str(wav)))
    if not items:
        raise DataFolderError(f"IEMOCAP folder {root}: no labelled utterances found in Session*/dialog/EmoEvaluation/*.txt")
    return SpeechSet(f"iemocap_fold{fold}", {"label": list(ER_CLASSES)}, items)
