"""`python run.py --help`: short, complete (every preset of every paper), fast; `--help <group>` lists options."""
import subprocess
import sys
from pathlib import Path

from experiments.core.help import PAPERS, group_help, main_help

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_main_help_is_short_and_names_every_paper_preset_and_paradigm():
    text = main_help(CONF)
    assert len(text.splitlines()) <= 60
    assert set(PAPERS) == {p.name for p in (CONF / "experiment").iterdir() if p.is_dir()}
    for yaml in (CONF / "experiment").glob("*/*.yaml"):
        assert f" {yaml.stem}" in text.split(f"  {yaml.parent.name} ", 1)[1], yaml
    for yaml in (CONF / "paradigm").glob("*.yaml"):
        assert f"  {yaml.stem} " in text
    assert "task=" in text and "report" in text and "select" in text


def test_group_help_lists_each_option_with_its_comment_and_refuses_an_unknown_group():
    text = group_help(CONF, "adapter")
    for yaml in (CONF / "adapter").glob("*.yaml"):
        assert f"  {yaml.stem} " in text
    assert "DyLoRA" in text
    try:
        group_help(CONF, "adaptr")
    except ValueError as err:
        assert "adaptr" in str(err) and "adapter" in str(err)
    else:
        raise AssertionError("an unknown group was accepted")


def test_run_py_help_prints_the_short_map_and_exits_2_on_an_unknown_group():
    out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == main_help(CONF) + "\n"
    bad = subprocess.run([sys.executable, "run.py", "--help", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --help nope") and bad.stderr.count("\n") == 1
