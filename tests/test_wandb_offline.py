"""W&B offline, read back: a real tiny sweep job through run.py logger=wandb, then the paper report logged.

Offline W&B (wandb 0.31) writes ``<run>/wandb/offline-run-*/``: the ``run-*.wandb`` record stream that
``wandb sync`` uploads (run, config, history, summary records) and ``files/media/{table,images}/...``.
"""
import json
import struct
from pathlib import Path

import pytest
import yaml

from tests.conftest import run, write_addition_qa
from tests.test_run import TINY


@pytest.fixture(scope="module")
def offline_env(env, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")  # no ~/.netrc, no API key: offline by itself
    out = {k: v for k, v in env.items() if k not in ("WANDB_API_KEY",)}
    out.update(HOME=str(home), WANDB_MODE="offline", WANDB_SILENT="true")
    return out


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, offline_env):
    root = tmp_path_factory.mktemp("wandb_sweep")
    data = write_addition_qa(root / "qa.jsonl", n=60)
    sweep_dir = root / "sweep"
    proc = run(["-m", *TINY, f"data.source={data}", "threads=1", "logger=wandb", "seed=7", "export.submodels=[]",
                f"hydra.sweep.dir={sweep_dir}"], offline_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep_dir


def read_wandb(path: Path) -> dict:
    """The run, config and summary records of an offline ``run-*.wandb`` file, through wandb's own protobuf
    ``Record``; the file is W&B's LevelDB-style log (a 7-byte ``:W&B`` header, 32 KiB blocks of records, each
    with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    out: dict = {"run": None, "config": {}, "summary": {}}
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        which = record.WhichOneof("record_type")
        if which == "run":
            out["run"] = record.run
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif which == "summary":
            for item in record.summary.update:
                if item.nested_key:  # a media value: {"path": ..., "_type": ...} item by item
                    head = item.nested_key[0]
                    if not isinstance(out["summary"].get(head), dict):
                        out["summary"][head] = {}
                    out["summary"][head]["/".join(item.nested_key[1:])] = json.loads(item.value_json)
                else:
                    out["summary"][item.key] = json.loads(item.value_json)
    return out


def _only(pattern_root: Path, pattern: str) -> Path:
    found = sorted(pattern_root.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_a_sweep_job_logs_its_overrides_summary_per_submodel_table_and_plot(sweep):
    job = sweep / "0"
    offline = _only(job / "wandb", "offline-run-*")
    logged = read_wandb(_only(offline, "run-*.wandb"))
    assert logged["run"].run_group == f"qdylora/quick/{sweep.name}"  # every job of the sweep shares it
    config = logged["config"]
    assert config["overrides"]["seed"] == "7" and config["overrides"]["logger"] == "wandb"
    assert config["adapter"]["r_max"] == 4  # the whole resolved config beside the overrides
    summary, results = logged["summary"], json.loads((job / "results.json").read_text())
    for b in (1, 2, 4):  # one summary key per sub-model, the value results.json holds
        assert summary[f"test/em@rank={b}"] == results[f"test/em@rank={b}"]
        assert summary[f"params@rank={b}"] == results[f"params@rank={b}"]
    assert summary["best/submodel"] == results["best/submodel"]
    assert summary["results/submodels"]["_type"] == "table-file" and summary["plots/results"]["_type"] == "image-file"
    files = offline / "files"
    table = json.loads((files / summary["results/submodels"]["path"]).read_text())
    assert table["columns"][0] == "submodel" and [r[0] for r in table["data"]] == ["rank=1", "rank=2", "rank=4"]
    col = table["columns"].index("test/loss")
    assert [r[col] for r in table["data"]] == [results[f"test/loss@rank={b}"] for b in (1, 2, 4)]
    assert (files / summary["plots/results"]["path"]).read_bytes()[:4] == b"\x89PNG"


def test_the_paper_report_is_logged_as_tables_and_images(sweep, offline_env, tmp_path):
    proc = run(["task=report", "report.all=true", f"report.sweep_dir={sweep}", "report.wandb=true",
                "report.tables=[qdylora_ranks]", f"hydra.run.dir={tmp_path}"], offline_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline = _only(sweep / "wandb", "offline-run-*")
    logged = read_wandb(_only(offline, "run-*.wandb"))
    assert logged["run"].run_group == sweep.name and logged["run"].job_type == "report"
    files, summary = offline / "files", logged["summary"]
    table = json.loads((files / summary["tables/qdylora_ranks"]["path"]).read_text())
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert table["columns"][:3] == ["adapter", "rank=1 mean", "rank=1 std"]
    assert table["data"][0][0] == "dylora" and table["data"][0][1] == pytest.approx(results["test/em@rank=1"])
    assert (files / summary["plots/qdylora_ranks"]["path"]).read_bytes()[:4] == b"\x89PNG"
