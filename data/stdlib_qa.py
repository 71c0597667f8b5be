"""An offline QA / instruction set built only from what Python ships (the stand-in for Alpaca-style data).

Two question families about public functions and classes of a fixed list of stdlib modules:

- ``module``: "Which module of the Python standard library defines `b64encode`?" -> ``base64``
- ``doc``: "Which function or class of the Python module `math` is documented as: "Return the
  square root of x."?" -> ``sqrt``

Answers are short (exact match), the pretrained model knows part of them but not the terse format, and
held-out names must be answered from what the model knows plus the naming patterns it picked up.
Splits (80/10/10) are fixed by a hash of the object (``module.name``), so both questions about one
object land in the same split and no test answer is a training question in disguise; ``seed`` only
shuffles ``train``. Records: ``{"instruction", "input": "", "output", "answers"}``.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import random
import re
import sys
from pathlib import Path

VERSION = "v1"  # bump when the generator changes, so stale caches are not reused
SPLITS = ("train", "validation", "test")
SPLIT_BOUNDS = (80, 90)  # hash bucket (mod 100) < 80 -> train, < 90 -> validation, else test

# Importable on every CPython >= 3.10 build (no optional C extensions such as zlib, bz2, lzma, ssl,
# sqlite3, ctypes, tkinter), and with the same public API on every OS (no os, time, socket, signal,
# select, subprocess, multiprocessing). Hard-coded so the set never depends on what is installed.
MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "binascii", "bisect", "calendar", "cmath",
    "code", "codecs", "collections", "collections.abc", "colorsys", "concurrent.futures", "configparser",
    "contextlib", "contextvars", "copy", "copyreg", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "graphlib", "hashlib", "heapq", "hmac", "html", "html.parser",
    "http.client", "http.cookies", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "keyword",
    "linecache", "logging", "logging.handlers", "mailbox", "math", "mimetypes", "netrc", "numbers",
    "operator", "optparse", "pathlib", "pickle", "pickletools", "pkgutil", "platform", "plistlib",
    "poplib", "pprint", "pstats", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "shelve", "shlex", "shutil", "smtplib", "stat", "statistics", "string", "struct", "tabnanny",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "traceback", "types",
    "typing", "unicodedata", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)
# Submodules whose contents differ by OS even though their package does not.
PLATFORM_SUBMODULES = ("asyncio.unix_events", "asyncio.windows_events", "asyncio.windows_utils")

MODULE_QUESTION = "Which module of the Python standard library defines `{name}`?"
DOC_QUESTION = 'Which function or class of the Python module `{module}` is documented as: "{doc}"?'
MAX_DOC_CHARS = 160  # keeps prompt + answer well inside 128 tokens
MIN_DOC_CHARS = 20   # shorter first sentences ("Return x.") rarely identify one name
# At most this many names per module (chosen by hash): `ast` alone defines ~140 node classes, and a
# model answering "ast" to every CamelCase name should not score well.
MAX_PER_MODULE = 30


# --- collecting (module, name) facts -------------------------------------------------------------

def _home(obj) -> str | None:
    """The module an object says it was defined in; bound methods (random.random) use their instance's."""
    home = getattr(obj, "__module__", None)
    if home is None and hasattr(obj, "__self__"):
        home = type(obj.__self__).__module__
    return home


def _belongs_to(home: str | None, module: str) -> bool:
    """Defined in `module` itself, its C accelerator (_heapq for heapq) or a submodule it re-exports."""
    if not home or home.startswith(PLATFORM_SUBMODULES):
        return False
    return home == module or home == "_" + module or home.startswith(module + ".")


def _public_names(mod) -> list[str]:
    names = getattr(mod, "__all__", None) or dir(mod)
    return sorted(n for n in names if not n.startswith("_"))


def _module_members(module: str) -> dict[str, object]:
    """Public functions/classes defined by `module`, by name (aliases such as `os.error` skipped)."""
    mod = importlib.import_module(module)
    members = {}
    for name in _public_names(mod):
        obj = getattr(mod, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__name__", None) != name or not _belongs_to(_home(obj), module):
            continue
        members[name] = obj
    return members


def _stable_hash(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16)


def _cap_per_module(facts: list[tuple[str, str, object]], cap: int) -> list[tuple[str, str, object]]:
    by_module: dict[str, list] = {}
    for fact in facts:
        by_module.setdefault(fact[0], []).append(fact)
    kept = []
    for group in by_module.values():
        kept += sorted(group, key=lambda f: _stable_hash(f"cap:{f[0]}.{f[1]}"))[:cap]
    return sorted(kept, key=lambda f: f[1])


def collect_definitions(modules=MODULES, cap: int | None = MAX_PER_MODULE) -> list[tuple[str, str, object]]:
    """(module, name, object) for names defined in exactly one listed module, sorted by name."""
    by_name: dict[str, dict[str, object]] = {}
    for module in modules:
        for name, obj in _module_members(module).items():
            by_name.setdefault(name, {})[module] = obj
    facts = []
    for name, where in sorted(by_name.items()):
        if len({id(o) for o in where.values()}) > 1:
            continue  # `dump` in json and pickle: the question would have two answers
        module = min(where, key=lambda m: (m != _home(where[m]), len(m), m))  # the defining module first
        facts.append((module, name, where[module]))
    return _cap_per_module(facts, cap) if cap else facts


# --- docstrings --------------------------------------------------------------------------------

_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")  # C functions start with "sqrt(x)" or "f(a) -> int"


def first_sentence(obj) -> str | None:
    """The object's own docstring's first sentence (not inherited), or None when unusable."""
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else None
    if not doc:
        return None
    paragraphs = [p for p in inspect.cleandoc(doc).split("\n\n") if p.strip()]
    while paragraphs and _SIGNATURE.match(paragraphs[0].strip().splitlines()[0]):
        paragraphs = paragraphs[1:]  # drop signature lines
    if not paragraphs:
        return None
    text = " ".join(paragraphs[0].split())
    match = re.search(r"(?<=[.!?])\s", text)
    sentence = text[: match.start()] if match else text
    if not MIN_DOC_CHARS <= len(sentence) <= MAX_DOC_CHARS or '"' in sentence:
        return None
    return sentence


# --- records -------------------------------------------------------------------------------------

def _answers(module: str, name: str, obj, family: str) -> list[str]:
    if family == "module":
        home = _home(obj)
        # `json.decoder` also defines JSONDecoder; `_io` is an implementation detail, not an answer.
        return [module] + ([home] if home != module and not home.startswith("_") else [])
    return [name, f"{module}.{name}"]


def _record(instruction: str, output: str, answers: list[str]) -> dict:
    return {"instruction": instruction, "input": "", "output": output, "answers": answers}


def _records_for(module: str, name: str, obj, docs_seen: dict[tuple[str, str], int]) -> list[dict]:
    records = [_record(MODULE_QUESTION.format(name=name), module, _answers(module, name, obj, "module"))]
    doc = first_sentence(obj)
    # A sentence naming the answer is a copy task, and one shared by several names is ambiguous.
    if doc and name.lower() not in doc.lower() and docs_seen[(module, doc)] == 1:
        question = DOC_QUESTION.format(module=module, doc=doc)
        records.append(_record(question, name, _answers(module, name, obj, "doc")))
    return records


def _split_of(key: str) -> str:
    bucket = _stable_hash(key) % 100
    return SPLITS[sum(bucket >= b for b in SPLIT_BOUNDS)]


def generate_stdlib_qa() -> dict[str, list[dict]]:
    """Build the splits from the running interpreter's stdlib (sorted by name, no cache, no shuffle)."""
    facts = collect_definitions()
    docs_seen: dict[tuple[str, str], int] = {}
    for module, _, obj in collect_definitions(cap=None):  # duplicates among capped-out names count too
        doc = first_sentence(obj)
        if doc:
            docs_seen[(module, doc)] = docs_seen.get((module, doc), 0) + 1
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for module, name, obj in facts:
        splits[_split_of(f"{module}.{name}")].extend(_records_for(module, name, obj, docs_seen))
    return splits


# --- cache and public API ------------------------------------------------------------------------

def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Path(base) / "efficient-transformers-lab" / "data" / f"stdlib_qa-{py}-{VERSION}.json"


FAMILIES = ("module", "doc")


def family_of(record: dict) -> str:
    """"module" (which module defines NAME?) or "doc" (which function is documented as ...?)."""
    return "module" if record["instruction"].startswith(MODULE_QUESTION.split("{")[0]) else "doc"


def build_stdlib_qa(seed: int = 0, families: tuple[str, ...] | list[str] = FAMILIES) -> dict[str, list[dict]]:
    """Splits ``train``/``validation``/``test``, cached as JSON per Python version; ``seed`` shuffles train;
    ``families`` keeps only those question families (the module family has shorter prompts)."""
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise ValueError(f"stdlib_qa families={list(families)}; valid choices: {', '.join(FAMILIES)}")
    path = cache_path()
    if path.is_file():
        splits = json.loads(path.read_text())
    else:
        splits = generate_stdlib_qa()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(splits, indent=1))
        os.replace(tmp, path)  # atomic: readers never see half a file
    splits = {k: [r for r in v if family_of(r) in families] for k, v in splits.items()}
    random.Random(seed).shuffle(splits["train"])  # validation/test keep their fixed order
    return splits


REQUIRED_KEYS = ("instruction", "output")


def load_jsonl_records(path: str | os.PathLike) -> list[dict]:
    """Records from a local JSON Lines file in the same format (``input`` defaults to "", ``answers`` to [output])."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            missing = [k for k in REQUIRED_KEYS if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{lineno}: record needs string field(s) {', '.join(missing)}")
            answers = row.get("answers") or [row["output"]]
            records.append(_record(row["instruction"], row["output"], [str(a) for a in answers])
                           | {"input": row.get("input") or ""})
    return records
