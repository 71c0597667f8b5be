"""experiments/scripts/gpu_check.sh --smoke: the GPU check's every step on tiny shapes on the CPU (docs/gpu_check.md)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_check_runs_every_step_and_reports_finite_figures(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run(["bash", "experiments/scripts/gpu_check.sh", "--smoke", "--out", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    steps = report["steps"]
    assert set(steps) == {"qlora", "kronecker", "decoding", "rehearsal"}
    assert not [name for name, s in steps.items() if "error" in s]
    qlora = {r["variant"]: r for r in steps["qlora"]["rows"]}
    assert set(qlora) == {"ours_nf4_dynamic", "ours_nf4_fixed", "peft_qlora"}
    for row in qlora.values():
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
        assert row["peak_mib"] > 0 and row["estimate_mib"] > 0
    # the same adapters: ours allocates r_max like PEFT's rank r_max
    assert qlora["ours_nf4_fixed"]["trainable_params"] == qlora["peft_qlora"]["trainable_params"]
    kron = steps["kronecker"]["rows"]
    assert {r["impl"] for r in kron} >= {"KronA (ours)", "PEFT LoKr", "KroneckerLinear", "nn.Linear"}
    assert all(math.isfinite(r["ms"]) for r in kron if "error" not in r)
    decoding = steps["decoding"]
    assert decoding["draft_layers"] == decoding["layers"] // 4
    assert [r["tokens"] for r in decoding["rows"]] == [16, 16, 16]  # 2 prompts x 8 new tokens, no EOS in random weights
    rehearsal = steps["rehearsal"]
    assert rehearsal["rehearsal"] == "tiny" and math.isfinite(rehearsal["metrics"]["best/test/em"])
    assert rehearsal["metrics"]["memory/train_peak_mib"] > 0 and rehearsal["estimate_peak_mib"] > 0
    text = (out / "gpu_check.md").read_text()
    for heading in ("QDyLoRA vs PEFT QLoRA", "KronA vs PEFT LoKr", "SoFT decoding", "Rehearsal of"):
        assert heading in text
    assert "Failed to load" not in proc.stderr + proc.stdout  # bitsandbytes' notice is silenced


def test_a_failing_step_is_reported_and_fails_the_check(tmp_path, monkeypatch):
    from experiments.scripts import gpu_check

    def broken(size, out):
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "STEPS", {"kronecker": broken, "decoding": gpu_check.decoding_step})
    rc = gpu_check.main(["--smoke", "--out", str(tmp_path), "--steps", "kronecker", "decoding"])
    assert rc == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "RuntimeError: boom" in report["steps"]["kronecker"]["error"]
    assert report["steps"]["decoding"]["rows"]  # the other step still ran
    assert "kronecker: FAILED" in (tmp_path / "gpu_check.md").read_text()
