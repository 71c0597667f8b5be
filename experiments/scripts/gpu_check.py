"""The one GPU check (docs/gpu_check.md): every GPU measurement in one call, one Markdown + one JSON report.

Steps, each against its peer on the same weights, inputs and shapes, in this order:

1. ``qlora``: QDyLoRA (ours, NF4 base, rank drawn each step; and at fixed r_max) vs PEFT QLoRA on the
   LLaMA-2-7B shape, bf16 compute, batch 4 x 1024 tokens, r = 64 on all seven linear maps, gradient
   checkpointing, AdamW (experiments/benchmarks/lora.py): tokens/s, peak memory, MFU (6N FLOPs per token:
   forward, input gradients, recomputed forward, N = base parameters, over the card's bf16 peak) and the
   memory estimate (experiments/core/estimate.py) beside each measured peak.
2. ``kronecker``: KronA vs PEFT LoKr, and KroneckerLinear vs nn.Linear, at d = 4096 in bf16
   (experiments/benchmarks/kronecker.py).
3. ``decoding``: SoFT's decoding cost per token on a LLaMA-2-7B-shaped model: greedy at full depth vs greedy
   at a quarter of the depth (the draft of self-speculative decoding), and ours self-speculative with that draft.
4. ``rehearsal``: one full-scale preset rehearsed with ``trainer`` on this GPU in bf16 (``rehearsal.accelerator=gpu``,
   a subprocess of ``run.py``: the real command path), its measured training peak beside its memory estimate.

A failing step is recorded (its error) and the others still run; the exit status is 1 if any failed.
``--smoke`` runs the same steps on tiny shapes on the CPU (CI runs it), so the GPU run cannot die on a typo.

    bash experiments/scripts/gpu_check.sh --out $OUT            # on one GPU, no network: about 6 minutes
    bash experiments/scripts/gpu_check.sh --smoke --out /tmp/gc  # on a CPU: about a minute
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from experiments.core.config import CONF_DIR

ROOT = CONF_DIR.parent
LLAMA2_7B = dict(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "benchmark" / "gpu_llama2_7b.yaml").model.random_config))
TINY_LLAMA = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
REHEARSED = "qdylora/llama2_13b_gsm8k"  # NF4 base, dynamic rank, the 64-rank evaluation grid with generations

# the sizes of each step: (full = one GPU, smoke = the CPU)
SIZES = {
    "full": {"device": "cuda", "dtype": "bfloat16", "benchmark": "gpu_llama2_7b", "kron_dims": [4096],
             "kron_tokens": 4096, "decode_config": LLAMA2_7B, "prompt_tokens": 128, "new_tokens": 64,
             "prompts": 4, "rehearsal": ["rehearsal.accelerator=gpu"]},
    "smoke": {"device": "cpu", "dtype": "float32", "benchmark": "cpu_tiny", "kron_dims": [64], "kron_tokens": 64,
              "decode_config": TINY_LLAMA, "prompt_tokens": 16, "new_tokens": 8, "prompts": 2,
              "rehearsal": ["rehearsal.accelerator=cpu", "threads=1"]},
}


def peak_tflops() -> float:
    """The card's dense bf16 peak the MFU is over (conf/estimate/default.yaml: the H200's)."""
    return float(OmegaConf.load(CONF_DIR / "estimate" / "default.yaml").peak_tflops)


# --- the steps ---------------------------------------------------------------------------------------------
def qlora_step(size: dict, out: Path) -> dict[str, Any]:
    from transformers import LlamaConfig

    from experiments.benchmarks.lora import load_yaml, run_benchmark
    from experiments.core.estimate import count_model, estimate_components

    b = load_yaml(CONF_DIR / "benchmark" / f"{size['benchmark']}.yaml")
    b = OmegaConf.merge(b, {"variants": ["ours_nf4_dynamic", "ours_nf4_fixed", "peft_qlora"],
                            "eval_ranks": [1, int(b.r_max)], "tensor_peak": False})
    if size["device"] == "cpu":  # a few steps are enough to prove the path
        b = OmegaConf.merge(b, {"warmup": 1, "steps": 2, "primer": "none", "threads": 1})
    result = run_benchmark(b, log=lambda *a, **k: None)
    # the estimate of the same job (the worst step: rank r_max), beside each measured peak
    counts = count_model(LlamaConfig(**OmegaConf.to_container(b.model.random_config)), list(b.model.targets),
                         int(b.r_max), quantized=True)
    act = 2 if str(b.model.dtype) == "bfloat16" else 4
    _, phases = estimate_components(counts, batch_size=int(b.batch_size), seq_len=int(b.seq_len), rank=int(b.r_max),
                                    quantized=True, weight_bytes=act, act_bytes=act, dropout=float(b.dropout),
                                    gradient_checkpointing=bool(b.model.gradient_checkpointing),
                                    double_quant=bool(b.quantization.double_quant))
    estimate_mib = max(phases.values()) / 2 ** 20
    flops_per_token = 6 * counts.base_params  # frozen base: forward + input gradients + recomputed forward
    rows = []
    for name, v in result["variants"].items():
        rows.append({"variant": name, "tokens_per_s": v["tokens_per_s"], "peak_mib": v["peak_mib"],
                     "peak_source": v["peak_source"], "estimate_mib": estimate_mib,
                     # of the card's peak: meaningless on a CPU
                     "mfu": v["tokens_per_s"] * flops_per_token / (peak_tflops() * 1e12) if size["device"] == "cuda" else None,
                     "trainable_params": v["trainable_params"], "mean_rank": v["mean_rank"]})
    (out / "qlora_benchmark.json").write_text(json.dumps(result, indent=1, default=str))
    return {"rows": rows, "ratios": result["ratios"], "eval_all_ranks": result["eval_all_ranks"],
            "base_params": counts.base_params, "setup": result["setup"]}


def kronecker_step(size: dict, out: Path) -> dict[str, Any]:
    from experiments.benchmarks.kronecker import benchmark_kronecker

    rows = benchmark_kronecker(size["kron_dims"], size["kron_tokens"], repeats=5 if size["device"] != "cpu" else 2,
                               warmup=2 if size["device"] != "cpu" else 1, nf4=True, verbose=False,
                               device=size["device"], dtype=size["dtype"])
    return {"rows": rows}


def decoding_step(size: dict, out: Path) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from modules.early_exit import greedy_generate, self_speculative_generate
    from modules.multi_exit import DecoderDepth

    torch.manual_seed(0)
    dtype = getattr(torch, size["dtype"])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(size["device"]):  # random weights built where they run, in their dtype (no hub, no copy)
            model = LlamaForCausalLM(LlamaConfig(**size["decode_config"])).eval()
    finally:
        torch.set_default_dtype(default)
    depth = DecoderDepth(model)
    n, draft = depth.num_layers, max(1, depth.num_layers // 4)
    vocab = int(size["decode_config"]["vocab_size"])
    prompts = [torch.randint(0, vocab, (1, size["prompt_tokens"]), device=size["device"]) for _ in range(size["prompts"])]
    new = size["new_tokens"]

    def at_depth(k: int) -> Callable:
        def run(ids):
            depth.set_depth(k)
            try:
                return greedy_generate(model, ids, new)
            finally:
                depth.set_depth(n)
        return run

    methods = {f"greedy, full depth ({n} layers)": at_depth(n), f"greedy, draft depth ({draft} layers)": at_depth(draft),
               f"ours self-speculative (draft {draft})": lambda ids: self_speculative_generate(model, ids, draft, max_new_tokens=new)}
    rows = []
    for name, fn in methods.items():
        fn(prompts[0])  # warm-up (kernels, cache allocation)
        _sync(size["device"])
        start, tokens = time.perf_counter(), 0
        for ids in prompts:
            tokens += len(fn(ids).tokens)
        _sync(size["device"])
        rows.append({"method": name, "ms_per_token": 1e3 * (time.perf_counter() - start) / max(tokens, 1),
                     "tokens": tokens})
    for r in rows:
        r["relative_to_full"] = r["ms_per_token"] / rows[0]["ms_per_token"]
    return {"rows": rows, "layers": n, "draft_layers": draft, "params": sum(p.numel() for p in model.parameters())}


def rehearsal_step(size: dict, out: Path) -> dict[str, Any]:
    run = out / "rehearsal"
    cmd = [sys.executable, "run.py", f"experiment={REHEARSED}", "rehearsal=tiny", "logger=none",
           f"hydra.run.dir={run}", *size["rehearsal"]]
    with (out / "rehearsal.log").open("w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = (out / "rehearsal.log").read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"{' '.join(cmd[1:])} exited {rc}: {tail[0] if tail else ''} (log: {out / 'rehearsal.log'})")
    results = json.loads((run / "results.json").read_text())
    from experiments.core.estimate import estimate

    est = estimate(OmegaConf.load(run / ".hydra" / "config.yaml"))
    metrics = {k: v for k, v in results.items() if k.startswith(("best/", "memory/"))}
    return {"preset": REHEARSED, "command": " ".join(cmd[1:]), "metrics": metrics,
            "estimate_peak_mib": est.peak_bytes / 2 ** 20, "rehearsal": results.get("rehearsal")}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


STEPS = {"qlora": qlora_step, "kronecker": kronecker_step, "decoding": decoding_step, "rehearsal": rehearsal_step}


# --- the report --------------------------------------------------------------------------------------------
def _num(x: Any, spec: str = ".3g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else "–"


def markdown(report: dict[str, Any]) -> str:
    from experiments.results.files import markdown_table

    lines = [f"# GPU check ({report['mode']}) on {report['device_name']}, {report['date']}", "",
             f"torch {report['torch']}; MFU over {report['peak_tflops']:g} TFLOP/s bf16; {report['elapsed_s']:.0f} s", ""]
    steps = report["steps"]
    if "rows" in steps.get("qlora", {}):
        q = steps["qlora"]
        lines += [f"## QDyLoRA vs PEFT QLoRA ({q['base_params'] / 1e9:.2f} B base parameters, batch "
                  f"{q['setup']['batch_size']} x {q['setup']['seq_len']}, r_max {q['setup']['r_max']})", "",
                  markdown_table(["variant", "tokens/s", "MFU", "peak MiB", "estimate MiB", "trainable", "mean rank"],
                                 [[r["variant"], _num(r["tokens_per_s"], ".0f"), _num(r["mfu"], ".1%"),
                                   _num(r["peak_mib"], ".0f"), _num(r["estimate_mib"], ".0f"),
                                   f"{r['trainable_params']:,}", _num(r["mean_rank"], ".1f")] for r in q["rows"]]),
                  "", f"peak: {q['rows'][0]['peak_source']}; estimate: experiments/core/estimate.py at rank r_max", ""]
    if "rows" in steps.get("kronecker", {}):
        lines += ["## KronA vs PEFT LoKr, KroneckerLinear vs nn.Linear (forward + backward)", "",
                  markdown_table(["d", "case", "implementation", "ms", "speed-up vs peer", "error"],
                                 [[r["d"], r["case"], r["impl"], _num(r["ms"], ".3f"), _num(r.get("speedup"), ".2f"),
                                   r.get("error", "")] for r in steps["kronecker"]["rows"]]), ""]
    if "rows" in steps.get("decoding", {}):
        d = steps["decoding"]
        lines += [f"## SoFT decoding cost per token ({d['params'] / 1e9:.2f} B parameters, {d['layers']} layers)", "",
                  markdown_table(["method", "ms/token", "relative to full depth", "tokens"],
                                 [[r["method"], _num(r["ms_per_token"], ".2f"), _num(r["relative_to_full"], ".2f"),
                                   r["tokens"]] for r in d["rows"]]), ""]
    if "metrics" in steps.get("rehearsal", {}):
        r = steps["rehearsal"]
        lines += [f"## Rehearsal of {r['preset']} (REHEARSAL: random shrunk model, generated data; not results)", "",
                  f"`{r['command']}`", "",
                  f"training peak {_num(r['metrics'].get('memory/train_peak_mib'), '.0f')} MiB "
                  f"({r['metrics'].get('memory/kind')}), estimate {_num(r['estimate_peak_mib'], '.0f')} MiB; "
                  + ", ".join(f"{k} = {_num(v) if isinstance(v, (int, float)) else v}"
                              for k, v in r["metrics"].items() if k.startswith("best/")), ""]
    for name, step in steps.items():
        if "error" in step:
            lines += [f"## {name}: FAILED", "", "```", step["error"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (what CI runs)")
    p.add_argument("--out", default="outputs/gpu_check", help="folder for gpu_check.md / gpu_check.json")
    p.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS), help="a subset of the steps")
    p.add_argument("-v", "--verbose", action="store_true", help="the libraries' own logs and warnings too")
    args = p.parse_args(argv)
    from experiments.core.quiet import quiet_libraries

    quiet_libraries(args.verbose)  # before transformers loads: its progress bars and notices say nothing here
    import torch

    mode = "smoke" if args.smoke else "full"
    size = SIZES[mode]
    if size["device"] == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible; on a CPU run `gpu_check.sh --smoke`", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    report: dict[str, Any] = {"mode": mode, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                              "device_name": torch.cuda.get_device_name() if size["device"] == "cuda" else "cpu",
                              "peak_tflops": peak_tflops(), "steps": {}}
    for name in args.steps:
        t = time.time()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            report["steps"][name] = STEPS[name](size, out)
        except Exception as err:  # noqa: BLE001 - recorded; the other steps still run
            report["steps"][name] = {"error": f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"}
        report["steps"][name]["seconds"] = time.time() - t
        print(f"gpu_check: {name} {'FAILED' if 'error' in report['steps'][name] else 'done'} in "
              f"{time.time() - t:.0f} s", file=sys.stderr, flush=True)
        if size["device"] == "cuda":
            torch.cuda.empty_cache()
    report["elapsed_s"] = time.time() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 1 if any("error" in s for s in report["steps"].values()) else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
