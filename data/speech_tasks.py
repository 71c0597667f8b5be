"""The speech tasks and conditions, checked without loading anything (no torch, no Lightning here).

``TASKS``: the synthetic espeak-ng sets (offline) and the real corpora (a folder each, data/speech_corpora.py);
``check_task`` (an unknown task, a corpus without its folder or an empty one: one line), ``load_task``,
``parse_condition`` (metric-key form ``snr10_white`` / ``rt60_0.6`` or ``Condition.parse``'s ``snr=10,noise=white``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modules.speech.corruption import Condition, ConditionError

# task -> (kind, loader name): synthetic sets build offline; corpora read a folder (data.root)
TASKS = {
    "keywords": ("synthetic", "keywords"),
    "speakers": ("synthetic", "speakers"),
    "emotions": ("synthetic", "emotions"),
    "intents": ("synthetic", "intents"),
    "speech_commands": ("corpus", "speech_commands"),
    "fluent_speech_commands": ("corpus", "fluent_speech_commands"),
    "voxceleb1": ("corpus", "voxceleb1_sid"),
    "iemocap": ("corpus", "iemocap"),
}
INTENT_TASKS = ("intents", "fluent_speech_commands")  # three slots: the intent head
_KEY = re.compile(r"^(?:rt60_(?P<rt60>\d+(?:\.\d+)?))?_?(?P<rirfile>rirfile)?_?"
                  r"(?:snr(?P<snr>-?\d+(?:\.\d+)?)_(?P<noise>[a-z]+))?$")


class SpeechDataError(ValueError):
    """A task, folder or condition that cannot be used (one-line message naming the key)."""


def parse_condition(text: Any) -> Condition:
    """``clean`` / ``snr10_white`` / ``rt60_0.6`` / ``rt60_0.3_snr5_babble`` (metric-key form) or
    ``snr=10,noise=white`` (``Condition.parse`` form) -> Condition; ``ConditionError`` otherwise."""
    text = str(text).strip()
    if "=" in text or text in ("", "clean"):
        return Condition.parse(text)
    m = _KEY.match(text)
    if not m or not any(m.groupdict().values()):
        raise ConditionError(f"unknown condition {text!r}; write clean, snr<dB>_<noise> (noise white, pink, babble, "
                             "file), rt60_<s>, rirfile, or combinations such as rt60_0.3_snr5_babble")
    g = m.groupdict()
    return Condition(snr=float(g["snr"]) if g["snr"] is not None else None, noise=g["noise"],
                     rt60=float(g["rt60"]) if g["rt60"] is not None else None,
                     rir="file" if g["rirfile"] else ("synthetic" if g["rt60"] is not None else None))


def check_task(task: Any, root: Any, folder: bool = True) -> None:
    """Before anything loads: the task exists; (``folder``) a real corpus has a non-empty folder here."""
    if task not in TASKS:
        raise SpeechDataError(f"data.task={task!r} is not an option; valid choices: {', '.join(TASKS)}")
    if folder and TASKS[task][0] == "corpus":
        if not root:
            raise SpeechDataError(f"data.task={task} reads a corpus folder: set data.root=<its folder>")
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            raise SpeechDataError(f"data.root={str(root)!r}: no such folder (the {task} corpus)")
        if not any(path.iterdir()):
            raise SpeechDataError(f"data.root={str(root)!r} is empty; it should hold the {task} corpus")


def load_task(task: str, root: str | None = None, fold: int = 1):
    """The task's ``SpeechSet`` (data/speech_corpora.py types)."""
    check_task(task, root)
    kind, name = TASKS[task]
    if kind == "synthetic":
        from data.speech_synth import synthetic_speech

        return synthetic_speech(name)
    from data import speech_corpora

    loader = getattr(speech_corpora, name)
    return loader(root, fold=fold) if task == "iemocap" else loader(root)


def default_cache_dir() -> Path:
    from data.speech_synth import speech_cache_root

    return speech_cache_root() / "features"
