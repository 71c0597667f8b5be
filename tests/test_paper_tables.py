"""Paper tables from a results folder: every spec, Markdown/CSV/LaTeX/PNG, the one-file HTML report.

The runs are written here in the exact layout a run leaves (``.hydra/{overrides,hydra,config}.yaml`` and
``results.json`` with the metric keys each paradigm logs); the numbers are chosen so each cell is known.
"""
import base64
import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from experiments.core.config import ConfigError
from experiments.results.paper_report import write_paper_report
from experiments.results.tables import find_jobs, load_spec, spec_names, table_of
from tests.conftest import ROOT, run


def _run(root: Path, name: str, experiment: str, metrics: dict, overrides=(), choices=None, config=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"experiment={experiment}", *overrides]))
    hydra = {"hydra": {"runtime": {"choices": {"experiment": experiment, "hydra/launcher": "basic", **(choices or {})}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {"eval": {"metric": "test/acc"}}))
    (job / "results.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    q = root / "qdylora" / "sweep"  # a sweep folder of jobs 0..3 beside single runs
    for seed, base in ((1, 0.2), (2, 0.4)):
        _run(q, str(seed), "qdylora/quick", {f"test/em@rank={b}": base + b / 100 for b in (1, 2, 4, 8)},
             [f"seed={seed}"], {"adapter": "dylora"})
    for b in (1, 2, 4, 8):
        _run(q, f"lora{b}", "qdylora/quick", {f"test/em@rank={b}": 0.5}, [f"adapter.r_max={b}"], {"adapter": "lora"})
    for method, acc in (("sorted", 0.9), ("standard", 0.5)):
        cells = {}
        for d in (1, 2):
            for w in (16, 32):
                at = f"@depth={d},width={w}"
                cells.update({f"test/acc{at}": acc - 0.1 * (2 - d) - (32 - w) / 320, f"macs{at}": d * w * 1000,
                              f"params{at}": d * w * 10})
        _run(root / "sortednet", method, "sortednet/quick", {**cells, "method": method}, [f"nested.method={method}"])
    weights = {"weights/layer_0": 0.2, "weights/layer_1": 0.3, "weights/layer_2": 0.5}
    acc = {f"test/acc@condition={c},layer={layer}": 0.5 + 0.1 * layer - (0.2 if c == "snr0_white" else 0)
           for c in ("clean", "snr0_white") for layer in (-1, 0, 1, 2)}
    _run(root / "whisper", "ks", "whisper/quick", {**acc, **weights}, choices={"data": "keywords_synth"})
    for adapter, score in (("krona", 0.8), ("lora", 0.7)):
        for task, metric in (("glue_cola", "mcc"), ("glue_sst2", "acc")):
            _run(root / "krona", f"{adapter}_{task}", "krona/quick",
                 {f"best/test/{metric}": score + (0.1 if metric == "acc" else 0), f"best/test/{'acc' if metric == 'mcc' else 'mcc'}": 0.0,
                  "params/trainable_pct": 0.05 if adapter == "krona" else 0.3, "latency/ms": 10.0, "latency/relative": 1.2},
                 [f"adapter={adapter}", f"data={task}"], config={"eval": {"metric": f"test/{metric}"}})
    for exp, em in (("soft/quick", 0.4), ("soft/sft_quick", 0.1)):
        _run(root / "soft", exp.replace("/", "_"), exp, {f"test/em@depth={n}": em + n / 100 for n in (6, 12)} |
             {f"test/loss@depth={n}": 2.0 - n / 10 for n in (6, 12)} |
             ({f"test/judge@depth={n}": 0.5 - n / 24 for n in (6, 12)} if exp == "soft/quick" else {}))
    for name, compression, distill, ppl, params in (("dense", "none", "none", 20.0, 135e6),
                                                     ("nearest", "kronecker", "ilkd", 40.0, 90e6)):
        _run(root / "kngpt2", name, "kngpt2/quick",
             {"test/ppl": ppl, "val/ppl": ppl + 1, "params/total": params, "compression/ratio": 135e6 / params},
             choices={"compression": compression, "distill": distill, "data": "pydoc_text"})
    for reg, a in (("none", 0.3), ("feature", 0.6)):
        _run(root / "focl", reg, "focl/quick",
             {"final/score@measure=avg_acc": a, "final/score@measure=forgetfulness": 1 - a, "final/score@measure=frechet": 10.0,
              "test/acc@after=t0,task=t0": 0.99, "test/acc@after=t1,task=t0": a, "test/acc@after=t1,task=t1": 0.98},
             [f"regularizer={reg}"])
    return root, write_paper_report(root)


def _md_rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in text.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_every_paper_with_runs_gets_its_table_and_the_others_are_listed_with_the_reason(results):
    _, report = results
    assert set(report["rendered"]) == {"qdylora_ranks", "sortednet_grid", "whisper_superb_layers", "krona_glue",
                                       "soft_exits_em", "soft_exits_loss", "soft_exits_judge", "focl_table",
                                       "focl_accuracy", "kngpt2_ppl"}
    skipped = dict(report["skipped"])
    assert skipped["qdylora_table2_falcon40b"] == "no run of qdylora/falcon_40b_gsm8k"
    md = report["markdown"].read_text()
    assert "## Not rendered" in md and "`qdylora_table3`" in md


def test_cells_are_mean_and_std_over_seeds_beside_the_paper_rows(results):
    root, _ = results
    q = _md_rows((root / "tables" / "qdylora_ranks.md").read_text())
    assert q["dylora"] == ["0.310 ± 0.141 (n=2)", "0.320 ± 0.141 (n=2)", "0.340 ± 0.141 (n=2)", "0.380 ± 0.141 (n=2)"]
    assert q["lora"] == ["0.500"] * 4  # one fixed-rank run per cell: no spread
    k = _md_rows((root / "tables" / "krona_glue.md").read_text())
    # CoLA scored by its own metric (MCC), SST-2 by accuracy, x100; avg over the tasks; the params and latency columns
    assert k["adapter"] == ["data=glue_cola", "data=glue_sst2", "avg", "% trainable", "latency ms", "latency x base"]
    assert k["krona"] == ["80.000", "90.000", "85.000", "0.050", "10.000", "1.200"]
    assert k["KronA (paper)"][2:4] == ["86.140", "0.070"] and k["full FT (paper)"][2] == "85.650"
    assert "Edalati et al., KronA (arXiv 2212.10650)" in (root / "tables" / "krona_glue.md").read_text()
    s = (root / "tables" / "sortednet_grid.md").read_text()
    for line in ("| sorted | 1 | 75.000 | 80.000 |", "| sorted | 2 | 85.000 | 90.000 |", "| standard | 2 | 45.000 | 50.000 |"):
        assert line in s
    w = (root / "tables" / "whisper_superb_layers.md").read_text()
    assert "| keywords_synth | -1 | 40.000 | 20.000 |" in w and "| keywords_synth | 2 | 70.000 | 50.000 |" in w
    soft = _md_rows((root / "tables" / "soft_exits_em.md").read_text())
    assert soft["soft/quick"] == ["0.460", "0.520"] and soft["soft/sft_quick"] == ["0.160", "0.220"]
    judge = _md_rows((root / "tables" / "soft_exits_judge.md").read_text())
    assert judge["soft/quick"] == ["0.250", "0.000"] and "soft/sft_quick" not in judge  # only the judged run
    assert "Runs: 1 (soft/quick)" in (root / "tables" / "report.md").read_text()  # the SFT run logged none
    assert "Runs: 1 (soft/quick). Sweep" in (root / "tables" / "report.md").read_text()
    kn = _md_rows((root / "tables" / "kngpt2_ppl.md").read_text())
    assert kn["compression"] == ["distill", "data=pydoc_text", "params (distinct)", "compression ratio"]
    assert kn["kronecker"] == ["ilkd", "40.000", "90,000,000", "1.500"] and kn["none"][1] == "20.000"
    assert "KnGPT2 (paper)" not in kn  # the paper's number is for a wikitext103 column, which no run has here
    jobs = [{"overrides": {"compression": "kronecker", "distill": "ilkd", "data": "wikitext103"},
             "metrics": {"test/ppl": 25.0}, "dir": root, "experiment": "kngpt2/gpt2_wikitext103", "config": None}]
    header, rows = table_of(load_spec("kngpt2_ppl"), jobs)
    assert header[2] == "data=wikitext103" and rows[0][2][0] == 25.0 and [r[2] for r in rows[1:]] == [20.5, 23.7]
    f = (root / "tables" / "focl_accuracy.md").read_text()
    assert "| feature | t1 | 0.600 | 0.980 |" in f


def test_csv_is_numeric_latex_escapes_and_plots_are_pngs(results):
    root, _ = results
    with (root / "tables" / "qdylora_ranks.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["adapter", *[f"rank={b} {x}" for b in (1, 2, 4, 8) for x in ("mean", "std", "n")]]
    dylora = next(r for r in rows if r[0] == "dylora")
    assert float(dylora[1]) == pytest.approx(0.31) and float(dylora[2]) == pytest.approx(math.sqrt(0.02))
    assert dylora[3] == "2"  # two seeds
    assert next(r for r in rows if r[0] == "lora")[2] == ""  # one run: no std
    tex = (root / "tables" / "krona_glue.tex").read_text()
    assert r"\% trainable" in tex and r"data=glue\_cola" in tex and r"\begin{tabular}" in tex
    plotted = {p.stem for p in (root / "tables").glob("*.png")}
    assert plotted == {"qdylora_ranks", "sortednet_grid", "whisper_superb_layers", "soft_exits_em", "soft_exits_loss"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (root / "tables").glob("*.png"))


def test_html_report_is_one_self_contained_file_with_the_plots_inline(results):
    root, report = results
    html = report["html"].read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 5
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # no external asset
    assert html.count("<table>") == 10 and "<td>0.310 ± 0.141 (n=2)</td>" in html
    md = report["markdown"].read_text()
    assert md.count("![") == 5 and "(qdylora_ranks.png)" in md


def test_every_spec_loads_names_its_sweep_and_its_presets_exist():
    presets = {str(p.relative_to(ROOT / "conf" / "experiment").with_suffix("")) for p in (ROOT / "conf" / "experiment").rglob("*.yaml")}
    for name in spec_names():
        spec = load_spec(name)
        assert spec["name"] == name and spec.get("sweep"), name
        for e in spec.get("experiments") or []:
            assert e in presets or any(p.startswith(e) for p in presets if e.endswith("/")), (name, e)
    with pytest.raises(ConfigError, match="table.colour is not an option of a table spec"):
        load_spec({"name": "x", "metric": "test/acc", "rows": ["a"], "axis": "rank", "colour": "red"})
    with pytest.raises(ConfigError, match="table.plot='bars' is not an option; valid choices: none, curve"):
        load_spec({"name": "x", "metric": "test/acc", "rows": ["a"], "axis": "rank", "plot": "bars"})


def test_report_all_through_run_py_and_an_empty_folder_is_one_line(results, env, tmp_path):
    root, _ = results
    proc = run(["task=report", "report.all=true", f"report.sweep_dir={root}", "report.tables=[krona_glue,focl_table]",
                f"hydra.run.dir={tmp_path / 'r'}"], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 tables: krona_glue, focl_table)" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run(["task=report", "report.all=true", f"report.sweep_dir={empty}", f"hydra.run.dir={tmp_path / 'e'}"], env)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "no run folder with a results.json under it" in proc.stderr


def test_the_committed_quick_report_rerenders_from_its_run_records(tmp_path):
    """docs/quick_report holds each quick run's results.json and .hydra/ (what a table reads): every table of the
    committed report comes out of them again, cell for cell, with today's table code and specs."""
    records = ROOT / "docs" / "quick_report"
    report = write_paper_report(records, out=tmp_path)
    assert set(report["rendered"]) == {"qdylora_ranks", "sortednet_grid", "whisper_superb_layers", "krona_glue",
                                       "soft_exits_em", "soft_exits_loss", "soft_exits_judge", "focl_table",
                                       "focl_accuracy", "focl_tuned", "kngpt2_ppl"}
    for name in report["rendered"]:
        assert (tmp_path / f"{name}.md").read_text() == (records / "tables" / f"{name}.md").read_text(), (
            f"{name}: re-render with python run.py task=report report.all=true report.sweep_dir=docs/quick_report")
    html = (records / "tables" / "report.html").read_text()
    assert html.count("<table>") == 11 and html.count("src='data:image/png;base64,") == 5


def test_a_quoted_override_forms_its_row_by_value(tmp_path):
    _run(tmp_path, "0", "qdylora/quick", {"test/em@rank=1": 0.5}, ["adapter.scale='alpha/sqrt(b)'"])
    _run(tmp_path, "1", "qdylora/quick", {"test/em@rank=1": 0.3}, ["adapter.scale=alpha/b"])
    header, rows = table_of({**load_spec("qdylora_ranks"), "rows": ["adapter.scale"]}, find_jobs(tmp_path))
    assert [r[0] for r in rows] == ["alpha/b", "alpha/sqrt(b)"] and rows[1][1][0] == 0.5


def test_the_committed_focl_tuned_table_rerenders_from_its_51_runs_and_agrees_with_the_sweep_script(tmp_path):
    """docs/focl_tuned_runs: FoCL's tuned sweep (3 seeds x 17 settings) with each run's results.json and .hydra/; the
    table renderer (conf/table/focl_tuned.yaml: tune + seeds) gives the committed table again, and its chosen weight
    per regulariser is the one experiments/scripts/focl_tuned_table.py chose (docs/focl.md, "The tuned table")."""
    from experiments.results.tables import write_table

    records = ROOT / "docs" / "focl_tuned_runs"
    jobs = find_jobs(records)
    assert len(jobs) == 51 and all(j.get("status", "finished") == "finished" for j in jobs)
    written = write_table(load_spec("focl_tuned"), jobs, tmp_path)
    assert written["markdown"] == (records / "focl_tuned.md").read_text()
    chosen = {(r[0], r[1]): r[2] for r in written["rows"]}
    script = (records / "table.md").read_text()
    for row in ("pixel", "feature", "combined", "ewc"):
        weight = re.search(rf"^\| {row} \| \*\*([0-9.]+)\*\*", script, re.M).group(1)  # the weighted part comes first
        assert float(chosen[(row, "")]) == float(weight), row
    rows = [line for line in script.splitlines() if re.match(r"^\| (none|pixel|feature|combined|ewc) \|", line)]
    assert len(rows) == 9 and all(line.endswith("| 3 | — |") for line in rows)  # 3 seeds per row, none failed
