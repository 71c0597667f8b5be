"""An empty axis list is an error (one line, exit 2, nothing written) unless its option says what empty means."""
import pytest
from hydra import compose, initialize_config_dir

from experiments.core.config import ConfigError
from tests.conftest import ROOT, run

CASES = [
    ("qdylora/quick", "depth.exits=[]", r"depth.exits=\[\] is empty; give at least one exit, .* or null \(no depth axis\)"),
    ("soft/quick", "depth.eval_exits=[]", r"depth.eval_exits=\[\] is empty; .* or null \(the exits\)"),
    ("qdylora/quick", "depth.eval_exits=[2]", r"depth.eval_exits=\[2\] needs a depth axis to evaluate; set depth.exits"),
    ("krona/quick", "adapter.eval_ranks=[]", r"adapter.eval_ranks=\[\] is empty; give null \(the trained ranks"),
    ("qdylora/quick", "adapter.eval_ranks=[]", r"adapter.eval_ranks=\[\]: give null, all, pow2 or a non-empty list"),
    ("sortednet/quick", "nested.eval_grid=[]", r"nested.eval_grid: evaluation grid is empty"),
    ("sortednet/quick", "nested.axes.width=[]", r"nested.axes.width is empty"),
    ("whisper/quick", "probe.layers=[]", r"probe.layers=\[\]: give all, or a list"),
    ("whisper/quick", "corruption.conditions=[]", r"corruption.conditions is empty; give at least \[clean\]"),
]


@pytest.mark.parametrize("experiment, override, message", CASES)
def test_an_empty_axis_is_refused_before_anything_loads(experiment, override, message):
    from experiments.core.tasks import validate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg, machine=False)


def test_depth_exits_empty_through_run_py_is_one_line_and_writes_nothing(env, tmp_path):
    proc = run(["depth.exits=[]", f"hydra.run.dir={tmp_path / 'run'}"], env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: depth.exits=[] is empty"), proc.stderr
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
