"""Offline text classification from the Python standard library: which package does a docstring come from?

A single-sentence GLUE-style task (like SST-2, but 8 topics): the text is the first sentence of the docstring
of a public class, function or method defined in one of ``PACKAGES`` (or its submodules), the label is that
top-level package (``asyncio``, ``email``, ``unittest``, ...). Packages were picked for having >= 110
distinct docstring sentences on Python 3.11 and distinct topics (networking, mail, testing, XML, ...).

Deterministic: members are walked in sorted order, duplicate sentences (inherited docstrings, a sentence in
two packages) are dropped, at most ``CAP`` sentences per package are kept (chosen by a stable hash) and
the split (80 % train, 20 % validation) is a stable hash of the sentence. Built in about a second, then
cached per Python version as a folder in the local GLUE layout (``train.tsv``, ``validation.tsv`` with
columns ``sentence`` and ``label``), which ``data/glue.py`` reads like any local GLUE task.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import pkgutil
import re
import sys
import uuid
from pathlib import Path

VERSION = "v2"  # v1 could take in methods other libraries attach to stdlib classes
PACKAGES = ("asyncio", "decimal", "email", "http", "logging", "multiprocessing", "unittest", "xml")
CAP = 110                 # sentences per package (balanced classes)
VALIDATION_PERCENT = 20
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)")


def _stable_hash(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16)


def first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = _SENTENCE.match(paragraph)
    return match.group(1) if match else paragraph


def _modules(package: str) -> list:
    root = importlib.import_module(package)
    mods = [root]
    for info in sorted(pkgutil.walk_packages(getattr(root, "__path__", []), package + "."), key=lambda i: i.name):
        if ".test" in info.name or info.name.endswith("__main__"):
            continue
        try:
            mods.append(importlib.import_module(info.name))
        except Exception:  # platform-only submodules (asyncio.windows_events, ...)
            continue
    return mods


def _defined_in(member, cls) -> bool:
    """A method written in the class body: not one another library attached later (transformers adds
    ``warning_once`` to ``logging.Logger``), so the task does not depend on what else was imported."""
    qualname = getattr(member, "__qualname__", "")
    return (callable(member) and qualname.startswith(cls.__qualname__ + ".")
            and getattr(member, "__module__", None) in (None, cls.__module__))


def package_sentences(package: str) -> list[str]:
    """Distinct docstring first sentences of what ``package`` defines (20-300 characters), sorted."""
    out = set()
    for mod in _modules(package):
        for name, obj in sorted(vars(mod).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            objs = [obj]
            if inspect.isclass(obj):
                objs += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and _defined_in(v, obj)]
            for x in objs:
                doc = inspect.getdoc(x) if x is obj else (getattr(x, "__doc__", None) or "")
                sentence = first_sentence(doc) if doc else ""
                if 20 <= len(sentence) <= 300 and "\t" not in sentence:
                    out.add(sentence)
    return sorted(out)


def generate() -> dict[str, list[tuple[str, str]]]:
    """{"train": [(sentence, package), ...], "validation": [...]} from the running interpreter."""
    by_package = {p: package_sentences(p) for p in PACKAGES}
    counts: dict[str, int] = {}
    for sentences in by_package.values():
        for s in sentences:
            counts[s] = counts.get(s, 0) + 1
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": []}
    for package, sentences in by_package.items():
        unique = [s for s in sentences if counts[s] == 1]  # a sentence two packages share has no one answer
        kept = sorted(unique, key=lambda s: _stable_hash(f"cap:{package}:{s}"))[:CAP]
        for s in kept:
            split = "validation" if _stable_hash(f"split:{s}") % 100 < VALIDATION_PERCENT else "train"
            splits[split].append((s, package))
    for rows in splits.values():
        rows.sort(key=lambda r: _stable_hash(f"order:{r[0]}"))
    return splits


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path(base) / "efficient-transformers-lab" / "data" / f"stdlib_topics-{py}-{VERSION}"


def build_stdlib_topics() -> Path:
    """The cached folder (built once, atomically): ``train.tsv`` and ``validation.tsv``."""
    final = cache_dir()
    if (final / "validation.tsv").is_file():
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    for split, rows in generate().items():
        lines = ["sentence\tlabel", *(f"{text}\t{label}" for text, label in rows)]  # no tabs/newlines in text
        (tmp / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first
        if not (final / "validation.tsv").is_file():
            raise
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final
