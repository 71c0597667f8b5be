"""Kronecker layers against their peers, in one process on the same inputs (docs/krona.md).

    adapter path   s * x (A ⊗ B)^T alone: our reshape matmul vs PEFT LoKr's delta (torch.kron, then F.linear)
    layer          base + adapter (frozen nn.Linear base, input needing grad as inside a network)
    nf4 layer      the same on a bitsandbytes NF4 base (LoKr: whatever it raises is recorded)
    dense vs kron  KroneckerLinear (A ⊗ B, trainable) vs nn.Linear (trainable), the KnGPT2 replacement

Both adapters get the same factor shapes: PEFT's own ``factorization`` (its default decompose_factor=-1)
is asserted to give ours, and LoKr's r is set so it keeps both factors full (r >= max(b_out, b_in) / 2;
below that it would factor B as a low-rank product), with alpha = r so its scale alpha / r is 1 like ours.
Forward + backward per call, ``warmup`` calls first, then ``repeats`` rounds alternating ours and the
peer; the median wall time and process CPU time are reported.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from typing import Callable, ClassVar, Literal, Optional, Sequence

import torch
from torch import nn

from modules.adapters.krona import KronALinear
from modules.kronecker import KroneckerLinear, factor_shapes, kron_flops, kron_params
from modules.options import option as opt

OURS, PEER = "KronA (ours)", "PEFT LoKr"


def _step(module: Callable, x: torch.Tensor, params: Sequence[torch.Tensor]) -> Callable[[], None]:
    def run():
        module(x).sum().backward()
        for p in params:  # a fresh gradient each call, as after an optimizer's zero_grad
            p.grad = None
        x.grad = None
        if x.is_cuda:  # kernels run asynchronously: the call is timed to its end
            torch.cuda.synchronize(x.device)
    return run


def _time_pair(runs: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (wall ms, CPU ms) per run; rounds alternate the runs so load drift hits them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for i in range(repeats):
        for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
            t, c = time.perf_counter(), time.process_time()
            runs[name]()
            wall[name].append(1e3 * (time.perf_counter() - t))
            cpu[name].append(1e3 * (time.process_time() - c))
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}


class _Holder(nn.Module):
    """One named linear, so PEFT's target_modules can find it."""

    def __init__(self, lin: nn.Module):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def _lokr(base: nn.Module, a_shape, b_shape) -> nn.Module:
    from peft import LoKrConfig, inject_adapter_in_model
    from peft.tuners.lokr.layer import factorization

    d_out, d_in = a_shape[0] * b_shape[0], a_shape[1] * b_shape[1]
    (l, k), (m, n) = factorization(d_out), factorization(d_in)  # LoKr's w1 is (l, m), w2 is (k, n)
    assert ((l, m), (k, n)) == (a_shape, b_shape), f"LoKr factors {((l, m), (k, n))} != ours {(a_shape, b_shape)}"
    r = -(-max(b_shape) // 2)  # full w2 (no low-rank split of B): r >= max(b_out, b_in) / 2
    holder = inject_adapter_in_model(LoKrConfig(r=r, alpha=r, target_modules=["lin"]), _Holder(base))
    layer = holder.lin
    with torch.no_grad():  # non-zero factors (values do not change the cost)
        layer.lokr_w1["default"].normal_()
        layer.lokr_w2["default"].normal_()
    return layer


def _nf4(d: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    import bitsandbytes as bnb

    lin = nn.Linear(d, d)
    q = bnb.nn.Linear4bit(d, d, bias=True, compute_dtype=dtype, quant_type="nf4")
    q.load_state_dict(lin.state_dict())
    q = q.to(device)  # quantizes on the device
    q.support_avx512bf16_for_cpu = False  # keep the autograd path (the repacked inference kernel has none)
    return q.requires_grad_(False)


def _row(d, case, impl, a_shape, b_shape, params, flops, times, **extra):
    return dict(d=d, case=case, impl=impl, a_shape=a_shape, b_shape=b_shape, params=params, gflop=flops / 1e9,
                ms=times[0], cpu_ms=times[1], **extra)


def benchmark_kronecker(dims: Sequence[int] = (768, 4096), tokens: int = 512, repeats: int = 5, warmup: int = 2,
                        nf4: bool = True, seed: int = 0, verbose: bool = True, device: str = "cpu",
                        dtype: str = "float32") -> list[dict]:
    """Rows (one per implementation and case) with forward FLOPs, trainable params and median times of
    forward + backward on ``tokens`` tokens; prints a Markdown table when ``verbose``. ``device`` / ``dtype``
    hold every weight and input (cuda + bfloat16: the GPU check)."""
    rows = []
    kind = getattr(torch, dtype)
    for d in dims:
        torch.manual_seed(seed)
        a_shape, b_shape = factor_shapes(d, d)
        n_kron, f_kron = kron_params(a_shape, b_shape), kron_flops(a_shape, b_shape, tokens=tokens)
        f_dense = 2 * tokens * d * d
        # (N, C), the same input for every implementation
        x = torch.randn(tokens, d, device=device, dtype=kind, requires_grad=True)
        base = nn.Linear(d, d).requires_grad_(False)
        ours = KronALinear(copy.deepcopy(base), a_shape, b_shape)
        with torch.no_grad():
            ours.kron_B.normal_()
        peer = _lokr(copy.deepcopy(base), a_shape, b_shape)
        ours, peer = ours.to(device, kind), peer.to(device, kind)
        ours_p = [ours.kron_A, ours.kron_B]
        peer_p = [p for p in peer.parameters() if p.requires_grad]
        assert sum(p.numel() for p in peer_p) == n_kron
        f_peer_delta = a_shape[0] * a_shape[1] * b_shape[0] * b_shape[1] + f_dense  # kron (d^2 mults) + F.linear
        delta = _time_pair({OURS: _step(ours.delta, x, ours_p),
                            PEER: _step(lambda h: peer._get_delta_activations("default", h), x, peer_p)},
                           repeats, warmup)
        rows += [_row(d, "adapter path", OURS, a_shape, b_shape, n_kron, f_kron, delta[OURS]),
                 _row(d, "adapter path", PEER, a_shape, b_shape, n_kron, f_peer_delta, delta[PEER])]
        layer = _time_pair({OURS: _step(ours, x, ours_p), PEER: _step(peer, x, peer_p)}, repeats, warmup)
        rows += [_row(d, "layer", OURS, a_shape, b_shape, n_kron, f_dense + f_kron, layer[OURS]),
                 _row(d, "layer", PEER, a_shape, b_shape, n_kron, f_dense + f_peer_delta, layer[PEER])]
        # the first adapted layer of a frozen model: its input needs no gradient, so the base costs one GEMM
        x0 = x.detach()
        layer0 = _time_pair({OURS: _step(ours, x0, ours_p), PEER: _step(peer, x0, peer_p)}, repeats, warmup)
        rows += [_row(d, "layer, input without grad", OURS, a_shape, b_shape, n_kron, f_dense + f_kron, layer0[OURS]),
                 _row(d, "layer, input without grad", PEER, a_shape, b_shape, n_kron, f_dense + f_peer_delta,
                      layer0[PEER])]
        del peer, ours
        if nf4:
            q = _nf4(d, device, kind)
            ours_q = KronALinear(q, a_shape, b_shape).to(device)
            ours_q.kron_A.data, ours_q.kron_B.data = ours_q.kron_A.data.to(kind), ours_q.kron_B.data.to(kind)
            times = _time_pair({OURS: _step(ours_q, x, [ours_q.kron_A, ours_q.kron_B])}, repeats, warmup)[OURS]
            rows.append(_row(d, "nf4 layer", OURS, a_shape, b_shape, n_kron, f_dense + f_kron, times))
            try:
                peer_q = _lokr(_nf4(d, device, kind), a_shape, b_shape).to(device)
                t = _time_pair({PEER: _step(peer_q, x, [p for p in peer_q.parameters() if p.requires_grad])},
                               repeats, warmup)[PEER]
                rows.append(_row(d, "nf4 layer", PEER, a_shape, b_shape, n_kron, float("nan"), t))
            except Exception as e:  # the peer's failure is the result
                rows.append(_row(d, "nf4 layer", PEER, a_shape, b_shape, n_kron, float("nan"), (float("nan"),) * 2,
                                 error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
        kron = KroneckerLinear(d, d, a_shape, b_shape).to(device, kind)
        dense = nn.Linear(d, d).to(device, kind)
        t = _time_pair({"KroneckerLinear": _step(kron, x, list(kron.parameters())),
                        "nn.Linear": _step(dense, x, list(dense.parameters()))}, repeats, warmup)
        rows += [_row(d, "dense vs kron", "KroneckerLinear", a_shape, b_shape, n_kron + d, f_kron,
                      t["KroneckerLinear"]),
                 _row(d, "dense vs kron", "nn.Linear", (d, d), (1, 1), d * d + d, f_dense, t["nn.Linear"])]
    _speedups(rows)
    if verbose:
        print(markdown_table(rows, tokens))
    return rows


def _speedups(rows: list[dict]) -> None:
    """speedup / cpu_speedup on our rows: the peer's wall (CPU) time over ours, same d and case."""
    peers = {(r["d"], r["case"]): r for r in rows if r["impl"] in (PEER, "nn.Linear")}
    for r in rows:
        peer = peers.get((r["d"], r["case"]))
        if r["impl"] in (OURS, "KroneckerLinear") and peer is not None:
            r["speedup"], r["cpu_speedup"] = peer["ms"] / r["ms"], peer["cpu_ms"] / r["cpu_ms"]


def markdown_table(rows: list[dict], tokens: int) -> str:
    lines = [f"forward + backward on {tokens} tokens, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
             "", "| d | case | implementation | A | B | trainable params | fwd GFLOP | ms (wall) | ms (CPU) | "
             "speed-up vs peer (wall / CPU) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, c = r.get("speedup"), r.get("cpu_speedup")
        cells = [r["d"], r["case"], r["impl"], "x".join(map(str, r["a_shape"])), "x".join(map(str, r["b_shape"])),
                 f"{r['params']:,}", f"{r['gflop']:.3f}", f"{r['ms']:.2f}", f"{r['cpu_ms']:.2f}",
                 f"{s:.1f}x / {c:.1f}x" if s is not None and s == s else ""]
        if "error" in r:
            cells[7:9] = ["fails", ""]
            cells[9] = f"`{r['error']}`"
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 4096], help="layer widths d (d x d maps)")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per call (batch x sequence)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--no-nf4", action="store_true", help="skip the NF4-base rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return benchmark_kronecker(args.dims, args.tokens, args.repeats, args.warmup, not args.no_nf4)


if __name__ == "__main__":
    main()


def benchmark_task(cfg) -> list[dict]:
    """``python run.py task=benchmark benchmark=cpu_kronecker``: the same rows, written as benchmark.json and
    benchmark.md in the run folder."""
    from experiments.core.runtime import run_dir_of
    from experiments.core.schema import check
    from experiments.results.files import write_json

    check(cfg, "benchmark", KroneckerBenchmarkSchema)
    b = cfg.benchmark
    if b.threads:
        torch.set_num_threads(int(b.threads))
    rows = benchmark_kronecker(list(b.dims), int(b.tokens), int(b.repeats), int(b.warmup), bool(b.nf4),
                               int(b.seed), verbose=False, device=str(b.device), dtype=str(b.dtype))
    table = markdown_table(rows, int(b.tokens))
    run_dir = run_dir_of()
    write_json(run_dir / "benchmark.json", {"rows": rows})
    (run_dir / "benchmark.md").write_text(table + "\n")
    print("\n" + table)
    return rows


@dataclasses.dataclass
class KroneckerBenchmarkSchema:
    yaml: ClassVar[str] = "benchmark/cpu_kronecker"
    closed: ClassVar[bool] = True
    kind: str = "kronecker"
    dims: list[int] = opt([768, 4096], min=1, min_len=1)
    tokens: int = opt(512, min=1)
    repeats: int = opt(5, min=1)
    warmup: int = opt(2, min=0)
    nf4: bool = True
    seed: int = 0
    threads: Optional[int] = opt(1, min=1)
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
