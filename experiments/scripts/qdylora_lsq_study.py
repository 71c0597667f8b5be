"""Least-squares toy for nested-rank LoRA (DyLoRA / QDyLoRA): how close each rank gets to Eckart-Young.

One ``NestedLoRALinear`` (the project's layer, over a zero base) is fitted to a fixed target M for every
rank at once: each Adam step draws the rank(s) b from the project's sampler and minimises
``||dW(b) - M||_F^2 / ||M||_F^2`` with ``dW(b) = s(b) B[:, :b] A[:b]`` (the layer's ``factors`` and ``scale``,
so the DyLoRA "frozen" prefix is the layer's own). After training, for b in the evaluation ranks, the
excess error ``err(b) - EY(b)`` where ``EY(b) = sum_{i>b} sigma_i^2 / sum_i sigma_i^2`` is the error of the
best rank-b approximation of M. The grid: scale x sampler x frozen, plus a LoRA trained alone at each rank.

    python -m experiments.scripts.qdylora_lsq_study --out outputs/lsq_study

Pure torch, one CPU thread; prints a Markdown table and writes ``lsq_study.csv`` / ``lsq_study.md``.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from modules.adapters.nested_lora import SCALES, NestedLoRALinear
from modules.submodel import FixedSampler, SandwichSampler, SubModelSpace, UniformSampler

SAMPLERS = ("uniform", "sandwich", "log_uniform")
EVAL_RANKS = (1, 2, 4, 8)


def make_target(d_out: int, d_in: int, seed: int, decay: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """M = U diag(sigma) V^T with random orthonormal U, V (seeded) and sigma_i = i^-decay, i = 1..min(d)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    k = min(d_out, d_in)
    u, _ = torch.linalg.qr(torch.randn(d_out, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, k, generator=g, dtype=torch.float64))
    sigma = torch.arange(1, k + 1, dtype=torch.float64) ** (-decay)
    return (u * sigma) @ v.T, sigma


def eckart_young(m: torch.Tensor, b: int) -> float:
    """Relative error of the best rank-b approximation: sum_{i>b} sigma_i^2 / sum_i sigma_i^2."""
    s2 = torch.linalg.svdvals(m.double()) ** 2
    return float(s2[b:].sum() / s2.sum())


def relative_error(dw: torch.Tensor, m: torch.Tensor) -> float:
    return float(((dw.double() - m.double()) ** 2).sum() / (m.double() ** 2).sum())


def make_sampler(name: str, ranks: list[int], seed: int):
    space = SubModelSpace({"rank": ranks})
    if name == "uniform":
        return UniformSampler(space, seed)
    if name == "log_uniform":
        return UniformSampler(space, seed, distribution="log_uniform")
    if name == "sandwich":
        return SandwichSampler(space, seed)
    raise ValueError(f"sampler {name!r} is not an option; choose one of: {', '.join(SAMPLERS)}")


SCHEDULES = ("cosine", "constant")


def fit(m: torch.Tensor, r_max: int, alpha: float, scale: str, sampler, frozen: bool, steps: int, lr: float,
        seed: int, schedule: str = "cosine") -> NestedLoRALinear:
    """Adam on the mean over the step's sub-models of ||s(b) B[:, :b] A[:b] - M||^2 / ||M||^2.

    ``cosine`` decays the learning rate to 0, so the last iterate is the minimiser of the expected
    (rank-averaged) objective, not a point wandering between the per-rank optima of the last few draws
    (what ``constant`` gives: a seed-to-seed spread as large as the effect; see docs/qdylora_lsq.md)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not an option; choose one of: {', '.join(SCHEDULES)}")
    torch.manual_seed(seed)
    base = nn.Linear(m.shape[1], m.shape[0], bias=False)
    nn.init.zeros_(base.weight)
    layer = NestedLoRALinear(base, r_max=r_max, alpha=alpha, scale=scale, frozen_prefix=frozen).train()
    target = m.float()
    norm2 = float((target ** 2).sum())
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    decay = (lambda t: 0.5 * (1 + math.cos(math.pi * t / steps))) if schedule == "cosine" else (lambda t: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    for step in range(steps):
        subs = sampler.submodels(step)
        loss = 0.0
        for sub in subs:
            b = int(sub["rank"])
            a, bm = layer.factors(b)  # honours the frozen prefix in training mode
            loss = loss + ((layer.scale(b) * bm @ a - target) ** 2).sum() / norm2
        opt.zero_grad(set_to_none=True)
        (loss / len(subs)).backward()
        opt.step()
        sched.step()
    return layer.eval()


def nested_excess(m, r_max, alpha, scale, sampler_name, frozen, steps, lr, seed, ranks=EVAL_RANKS,
                  schedule="cosine"):
    """One nested run (ranks 1..r_max drawn by the sampler); excess error at each rank of ``ranks``."""
    sampler = make_sampler(sampler_name, list(range(1, r_max + 1)), seed)
    layer = fit(m, r_max, alpha, scale, sampler, frozen, steps, lr, seed, schedule)
    with torch.no_grad():
        return {b: relative_error(layer.delta_weight(b), m) - eckart_young(m, b) for b in ranks}


def separate_excess(m, alpha, steps, lr, seed, ranks=EVAL_RANKS, schedule="cosine"):
    """A plain LoRA trained alone at each rank b (r_max = b, PEFT's scale alpha / b)."""
    out = {}
    for b in ranks:
        sampler = FixedSampler(SubModelSpace({"rank": [b]}), seed)
        layer = fit(m, b, alpha, "alpha/b", sampler, False, steps, lr, seed, schedule)
        with torch.no_grad():
            out[b] = relative_error(layer.delta_weight(b), m) - eckart_young(m, b)
    return out


def settings():
    for scale, sampler, frozen in itertools.product(SCALES, SAMPLERS, (False, True)):
        yield f"{scale} | {sampler} | {'on' if frozen else 'off'}", dict(scale=scale, sampler=sampler, frozen=frozen)
    yield "separate LoRA per rank | - | -", None


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_study(steps: int, seeds: list[int], d_out: int, d_in: int, r_max: int, lr: float, alpha: float,
              decay: float = 1.0, ranks=EVAL_RANKS, schedule: str = "cosine", log=print) -> list[dict]:
    ranks = [b for b in ranks if b <= r_max]
    rows = []
    for name, cfg in settings():
        t0 = time.perf_counter()
        per_seed = []
        for seed in seeds:
            m, _ = make_target(d_out, d_in, seed, decay)
            if cfg is None:
                per_seed.append(separate_excess(m, alpha, steps, lr, seed, ranks, schedule))
            else:
                per_seed.append(nested_excess(m, r_max, alpha, cfg["scale"], cfg["sampler"], cfg["frozen"],
                                              steps, lr, seed, ranks, schedule))
        scale, sampler, frozen = [p.strip() for p in name.split("|")]
        row = {"setting": name, "scale": scale, "sampler": sampler, "frozen": frozen}
        for b in ranks:
            row[f"mean@{b}"], row[f"std@{b}"] = mean_std([r[b] for r in per_seed])
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log(f"{name}: " + ", ".join(f"b={b} {row[f'mean@{b}']:.4f}" for b in ranks) + f" ({row['seconds']:.1f} s)")
    return rows


def _num(x: float) -> str:
    """4 decimals; small values in e-notation so their size stays visible; below 1e-6 (the float32
    resolution of the relative error, where the sign is rounding noise) as 0."""
    if abs(x) < 1e-6:
        return "0"
    return f"{x:.4f}" if abs(x) >= 1e-3 else f"{x:.1e}"


def markdown(rows: list[dict], ranks) -> str:
    head = "| scale | sampler | frozen | " + " | ".join(f"rank {b}" for b in ranks) + " |"
    lines = [head, "|" + "---|" * (3 + len(ranks))]
    for r in rows:
        cells = [f"{_num(r[f'mean@{b}'])} ± {_num(r[f'std@{b}'])}" for b in ranks]
        lines.append(f"| {r['scale']} | {r['sampler']} | {r['frozen']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--d-out", type=int, default=64)
    p.add_argument("--d-in", type=int, default=48)
    p.add_argument("--r-max", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha (default 8 = r_max: alpha/r_max = 1)")
    p.add_argument("--decay", type=float, default=1.0, help="singular values of M: sigma_i = i^-decay")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning rate: cosine to 0 or constant")
    p.add_argument("--out", type=Path, default=Path("outputs/lsq_study"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ranks = [b for b in EVAL_RANKS if b <= args.r_max]
    rows = run_study(args.steps, args.seeds, args.d_out, args.d_in, args.r_max, args.lr, args.alpha,
                     args.decay, ranks, args.schedule)
    wall = time.perf_counter() - t0
    m, _ = make_target(args.d_out, args.d_in, args.seeds[0], args.decay)
    ey = ", ".join(f"EY({b}) = {eckart_young(m, b):.4f}" for b in ranks)
    table = markdown(rows, ranks)
    text = (f"Relative excess error err(b) - EY(b), mean ± std over seeds {args.seeds}; M {args.d_out}x{args.d_in}, "
            f"sigma_i = i^-{args.decay:g} ({ey}); r_max {args.r_max}, alpha {args.alpha:g}, Adam lr {args.lr:g} "
            f"({args.schedule}), {args.steps} steps; wall {wall:.0f} s.\n\n{table}\n")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lsq_study.md").write_text(text)
    with (args.out / "lsq_study.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
