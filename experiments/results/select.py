"""``task=select``: the best sub-model of a finished run (or sweep) under a budget, explained and exported.

Every evaluated sub-model of the run (of every job of a sweep) is a candidate with the costs its run logged
(``params@<sub>``, ``flops@<sub>`` or 2 x ``macs@<sub>``, ``latency_ms@<sub>``, ``memory_mb@<sub>``) and its
scores: the candidates within every budget given compete on the VALIDATION value of ``select.metric`` (by
default the run's ``eval.metric``: ``test/em`` or ``val/em`` both choose on ``val/em``), and the choice's test
value is reported beside it (never chosen on). The choice is printed as a table (each candidate, its costs, its score, whether it
fits), written to ``<run>/<select.export_dir>/selection.json``, and the sub-model is exported through the
run's paradigm (``Paradigm.export_submodel``: the rank-b PEFT adapter of a nested LoRA, a standalone ViT of
a SortedNet sub-network) into ``<run>/<select.export_dir>/<sub-model>/``. No search, no retraining: this is
the selection SortedNet's many-in-one training promises.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import ConfigError, get
from experiments.core.schema import check, opt
from modules.submodel import SubModel, split_metric_key

COSTS = ("params", "flops", "latency_ms", "memory_mb")


@dataclasses.dataclass
class BudgetSchema:
    closed: ClassVar[bool] = True
    params: Optional[float] = opt(None, min=0)
    flops: Optional[float] = opt(None, min=0)
    latency_ms: Optional[float] = opt(None, min=0)
    memory_mb: Optional[float] = opt(None, min=0)


@dataclasses.dataclass
class SelectSchema:
    closed: ClassVar[bool] = True
    run_dir: Optional[str] = None
    metric: Optional[str] = None
    higher_is_better: Optional[bool] = None
    budget: Optional[dict] = None
    export_dir: str = "selected"


def candidates(job: dict[str, Any], metric: str) -> list[dict[str, Any]]:
    """One per sub-model that has ``val/<m>`` of ``metric`` (default condition only): its validation score,
    its test value (reported, not chosen on) and the costs the run logged."""
    from experiments.results.files import split_of

    metrics, m = job["metrics"], split_of(metric)[1]
    out = []
    for key, value in metrics.items():
        name, cell = split_metric_key(key)
        if name != f"val/{m}" or cell.condition.dims or not isinstance(value, (int, float)):
            continue
        sub = cell.submodel
        at = f"@{sub.key}" if sub.dims else ""
        costs = {c: metrics.get(f"{c}{at}") for c in COSTS}
        if costs["flops"] is None and isinstance(metrics.get(f"macs{at}"), (int, float)):
            costs["flops"] = 2.0 * metrics[f"macs{at}"]  # a multiply-add is two FLOPs
        out.append({"job": job, "sub": sub, "score": float(value), "test": metrics.get(f"test/{m}{at}"),
                    "costs": costs})
    return out


def _config_of(job_dir: Path) -> DictConfig:
    """The run's resolved config (resume_config.yaml, written by training), else Hydra's copy."""
    path = job_dir / "resume_config.yaml"
    return OmegaConf.load(path if path.exists() else job_dir / ".hydra" / "config.yaml")


def choose(cands: list[dict[str, Any]], budget: dict[str, float], higher_is_better: bool, where: str) -> dict[str, Any]:
    """The best candidate within every budget; one ConfigError line naming the cheapest cost otherwise."""
    for kind, limit in budget.items():
        logged = [c for c in cands if isinstance(c["costs"][kind], (int, float))]
        if not logged:
            have = sorted({k for c in cands for k, v in c["costs"].items() if v is not None})
            raise ConfigError(f"select.budget.{kind}={limit:g}: {where} logged no {kind}@<sub-model>; "
                              f"budgets it can check: {', '.join(have) or 'none'}")
        cheapest = min(logged, key=lambda c: c["costs"][kind])
        if cheapest["costs"][kind] > limit:
            raise ConfigError(f"select.budget.{kind}={limit:g}: no sub-model of {where} fits; the smallest, "
                              f"{_name(cheapest)}, has {kind}={_num(cheapest['costs'][kind])}")
    for c in cands:
        c["fits"] = all(isinstance(c["costs"][k], (int, float)) and c["costs"][k] <= v for k, v in budget.items())
    fitting = [c for c in cands if c["fits"]]
    if not fitting:
        smallest = {k: min((c for c in cands if c["costs"][k] is not None), key=lambda c: c["costs"][k]) for k in budget}
        raise ConfigError("select.budget: no sub-model fits every budget at once (" + "; ".join(
            f"{k}={v:g}: smallest {_name(smallest[k])} has {_num(smallest[k]['costs'][k])}" for k, v in budget.items()) + ")")
    sign = 1 if higher_is_better else -1
    return max(fitting, key=lambda c: (sign * c["score"], -sum(c["costs"][k] for k in budget)))


def _name(c: dict[str, Any]) -> str:
    key = c["sub"].key or "full"
    return key if c.get("single") else f"{key} ({c['job']['dir'].name})"


def _num(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def explain(cands: list[dict[str, Any]], metric: str, chosen: dict[str, Any]) -> str:
    from experiments.results.files import markdown_table

    from experiments.results.files import split_of

    m = split_of(metric)[1]
    rows = [[("→ " if c is chosen else "") + _name(c), *[_num(c["costs"][k]) for k in COSTS], f"{c['score']:.4f}",
             _num(c["test"]), "yes" if c["fits"] else "no"]
            for c in sorted(cands, key=lambda c: (str(c["job"]["dir"]), c["sub"].sort_key))]
    return markdown_table(["sub-model", *COSTS, f"val/{m} (chosen on)", f"test/{m}", "fits"], rows)


def select_task(cfg: DictConfig) -> dict[str, Any]:
    from experiments import paradigms
    from experiments.results.files import split_of, write_json
    from experiments.results.tables import find_jobs

    check(cfg, "select", SelectSchema)
    check(cfg, "select.budget", BudgetSchema)
    source = get(cfg, "select.run_dir")
    if not source or not Path(source).is_dir():
        raise ConfigError(f"select.run_dir={source!r}: no such folder; give a finished run folder (holding "
                          "results.json) or a sweep folder")
    jobs = find_jobs(Path(source))
    if not jobs:
        raise ConfigError(f"select.run_dir={source!r}: no finished run there (no results.json)")
    budget = {k: float(v) for k, v in (OmegaConf.to_container(cfg.select.budget) or {}).items() if v is not None}
    first = _config_of(jobs[0]["dir"])
    metric = get(cfg, "select.metric") or str(first.eval.metric)
    try:
        m = split_of(metric)[1]
    except ValueError:
        raise ConfigError(f"select.metric={metric}: name a split and a metric, e.g. test/{metric} (chosen on "
                          f"val/{metric}, reported on test/{metric})") from None
    higher = get(cfg, "select.higher_is_better")
    higher = bool(first.eval.get("higher_is_better", True)) if higher is None else bool(higher)
    cands = [c for job in jobs for c in candidates(job, metric)]
    if not cands:
        raise ConfigError(f"select.metric={metric!r}: no sub-model of {source} has val/{m} (the choice is made on "
                          f"validation); give a metric the run logged on both splits, e.g. "
                          f"{next((k for k in jobs[0]['metrics'] if k.startswith('val/')), 'val/loss')}")
    for c in cands:
        c["single"] = len(jobs) == 1
    chosen = choose(cands, budget, higher, source)
    print(f"candidates (chosen on val/{m}, {'higher' if higher else 'lower'} is better; budget: "
          f"{', '.join(f'{k} <= {v:g}' for k, v in budget.items()) or 'none'}):\n{explain(cands, metric, chosen)}")
    sub, job_dir = chosen["sub"], chosen["job"]["dir"]
    print(f"selected: {sub.key or 'full'} of {job_dir}  val/{m}={chosen['score']:.4f}  test/{m}={_num(chosen['test'])}  " +
          "  ".join(f"{k}={_num(v)}" for k, v in chosen["costs"].items() if v is not None))
    out = job_dir / str(get(cfg, "select.export_dir") or "selected")
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = _config_of(job_dir)
    paradigm = paradigms.get_paradigm(str(run_cfg.paradigm))
    written: list[Path] = []
    if sub.dims and (job_dir / "checkpoints" / "last.ckpt").exists():
        module = paradigm.trained_module(run_cfg, job_dir)
        written = paradigm.export_submodel(run_cfg, module, sub, out / (sub.key.replace("=", "_").replace(",", "_")))
    selection = {"submodel": sub.key, "run_dir": str(job_dir), "metric": f"val/{m}", "score": chosen["score"],
                 "test_metric": f"test/{m}", "test_score": chosen["test"],
                 "costs": chosen["costs"], "budget": budget, "exported": [str(p) for p in written]}
    write_json(out / "selection.json", selection)
    for path in written:
        print(f"exported: {path}")
    if not written:
        why = "the run has one model, no sub-model axis" if not sub.dims else f"the {paradigm.name} paradigm exports no sub-model"
        print(f"nothing exported ({why}); the choice is in {out / 'selection.json'}")
    return selection
