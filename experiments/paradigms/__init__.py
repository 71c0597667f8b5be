"""The paradigm registry: ``paradigm: <name>`` in the config -> a ``Paradigm`` (experiments/paradigms/base.py).

Entries are import paths, so naming a paradigm imports only its own module (and ``--help`` imports none).
``register`` adds one at run time (a test's toy paradigm, a user's own in a notebook).
"""
from __future__ import annotations

import importlib

PARADIGMS: dict[str, str] = {
    "lm": "experiments.paradigms.lm:LMParadigm",
    "vision": "experiments.paradigms.vision:VisionParadigm",
    "glue": "experiments.paradigms.glue:GlueParadigm",
    "speech": "experiments.paradigms.speech:SpeechParadigm",
    "continual": "experiments.paradigms.continual:ContinualParadigm",
    "distill_lm": "experiments.paradigms.distill:DistillLMParadigm", "distill_glue": "experiments.paradigms.distill:DistillGlueParadigm",
}
_registered: dict[str, object] = {}


def register(name: str, paradigm: object) -> None:
    _registered[name] = paradigm


def names() -> list[str]:
    return sorted({*PARADIGMS, *_registered})


def get_paradigm(name: str):
    if name in _registered:
        return _registered[name]
    module, _, cls = PARADIGMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
