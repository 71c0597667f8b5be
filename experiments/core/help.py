"""`python run.py --help`: a short map of tasks, papers with their presets, and paradigms with their groups.

Read straight from `conf/` (no Hydra, no torch), so it stays fast and cannot go stale: a new preset or group
appears here by existing. `python run.py --help <group>` lists one group's options with their one-line comments;
Hydra's own help (the composed config) stays behind any other override: `python run.py experiment=<x> --help`.
"""
from __future__ import annotations

import re
from pathlib import Path

PAPERS = {  # conf/experiment/<folder> -> the paper it reproduces
    "qdylora": "QDyLoRA: quantized dynamic-rank LoRA",
    "soft": "SoFT: sorted fine-tuning (multi-exit LLaMA)",
    "sortednet": "SortedNet: nested sub-networks of a ViT",
    "whisper": "Whisper probing on SUPERB tasks, noise and reverb",
    "krona": "KronA: Kronecker adapter on GLUE",
    "kngpt2": "KnGPT2: Kronecker GPT-2 with ILKD",
    "focl": "FoCL: continual learning of a generator",
}

_SHARED_GROUPS = ("optimizer", "scheduler", "trainer", "logger", "callbacks", "checkpoint", "eval", "export",
                  "table", "search")


def _tasks(conf: Path) -> str:
    """The task list, from the comment of `task:` in the root config (the one place it is written)."""
    for line in (conf / "config.yaml").read_text().splitlines():
        if line.startswith("task:") and "#" in line:
            return line.split("#", 1)[1].strip()
    return "train"


def _paradigm_groups(yaml: Path) -> list[str]:
    """The groups a paradigm's yaml brings (`- /model: ...`), in order; overrides of shared groups left out."""
    return re.findall(r"^\s*-\s*/(\w+):", yaml.read_text(), flags=re.M)


def _first_comment(yaml: Path) -> str:
    for line in yaml.read_text().splitlines():
        text = line.lstrip("# ").rstrip()
        if line.startswith("#") and text and not text.startswith("@package"):
            return text
    return ""


def _wrap(items: list[str], indent: int, width: int = 110) -> list[str]:
    lines, line = [], ""
    for item in items:
        if line and indent + len(line) + len(item) + 2 > width:
            lines.append(line.rstrip(","))
            line = ""
        line += f"{item}, "
    return [" " * indent + x for x in lines + [line.rstrip(", ")]]


def main_help(conf: Path) -> str:
    out = ["python run.py [task=<task>] [experiment=<paper>/<preset>] [<group>=<option>] [<key>=<value>] [-m]", "",
           "Start here:",
           "  python run.py                                  the offline default (experiment=qdylora/quick, a few minutes)",
           "  python run.py experiment=sortednet/quick       any paper's offline preset; -m a=1,2 sweeps",
           "  python run.py experiment=<paper>/<preset> --cfg job   one preset's composed config",
           "  python run.py --help <group>                   one group's options (e.g. --help adapter)",
           "", f"Tasks (task=...): {_tasks(conf)}", "",
           "Papers and presets (experiment=<paper>/<preset>; 'quick' ones run offline on a CPU):"]
    for folder, title in PAPERS.items():
        names = sorted(p.stem for p in (conf / "experiment" / folder).glob("*.yaml"))
        offline = [n for n in names if "quick" in n]
        full = [n for n in names if "quick" not in n]
        out.append(f"  {folder:<10}{title}")
        out += _wrap([f"offline: {' '.join(offline)}"], 12) + _wrap(["full scale: " + " ".join(full)], 12)
    out += ["", "Paradigms (an experiment brings one) and the groups only they use:"]
    for yaml in sorted((conf / "paradigm").glob("*.yaml")):
        out.append(f"  {yaml.stem:<13}{' '.join(_paradigm_groups(yaml))}")
    out += [f"Shared groups: {' '.join(_SHARED_GROUPS)}", "",
            "Docs: README.md (commands), docs/ARCHITECTURE.md (where things are). Hydra's own flags: --hydra-help"]
    return "\n".join(out)


def group_help(conf: Path, group: str) -> str:
    folder = conf / group.replace(".", "/")
    if not folder.is_dir():
        groups = sorted(p.name for p in conf.iterdir() if p.is_dir())
        raise ValueError(f"--help {group}: no such config group; valid groups: {', '.join(groups)}")
    lines = [f"{group}=<option> (conf/{group}/):"]
    for yaml in sorted(folder.rglob("*.yaml")):
        lines.append(f"  {str(yaml.relative_to(folder).with_suffix('')):<24}{_first_comment(yaml)}")
    lines.append(f"Each option's keys and their comments: conf/{group}/<option>.yaml; "
                 f"python run.py {group}=<option> --cfg job shows it composed.")
    return "\n".join(lines)
