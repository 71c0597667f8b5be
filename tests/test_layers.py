"""The layering docs/ARCHITECTURE.md states, read from the source (every import, also inside functions)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def offenders(folders: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{p.relative_to(ROOT)} imports {name}" for folder in folders for p in (ROOT / folder).rglob("*.py")
                  for name in imports_of(p) if any(name == f or name.startswith(f + ".") for f in forbidden))


def test_benchmarks_stay_off_the_run_path():
    # a run's pre-flight checks (memory, cost) live in experiments/core; benchmarks only measure
    assert offenders(["experiments/paradigms", "experiments/core", "experiments/results", "modules", "data"],
                     ("experiments.benchmarks",)) == []


def test_pure_pieces_do_not_import_the_wiring():
    assert offenders(["modules"], ("experiments", "data")) == []
    assert offenders(["data"], ("experiments",)) == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from experiments.benchmarks.lora import run_benchmark\n")
    assert "experiments.benchmarks.lora" in imports_of(source)
