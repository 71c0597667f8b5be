"""SortedNet on ViT through run.py (paradigm=vision): grid results, bad input, baselines, method comparison."""
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, run

# A tiny ViT (2 blocks, d=32, 2 heads of 16) on digits, a 2x2 depth x width grid, a few steps.
TINY = ["experiment=sortednet/quick", "model.hidden_size=32", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "model.intermediate_size=64", "nested.axes.depth=[1,2]",
        "nested.axes.width=[16,32]", "trainer.max_steps=6", "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1", "data.batch_size=32", "latency.repeats=2", "latency.warmup=1"]
GRID = [f"depth={d},width={w}" for d in (1, 2) for w in (16, 32)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("sorted_run")
    proc = run([*TINY, f"hydra.run.dir={run_dir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


# --- one sorted run -------------------------------------------------------------------------

def test_sorted_run_writes_every_subnetwork_with_costs(trained):
    from modules.sorted_vit import SortedViT, SortedViTConfig, count_flops, count_params
    from modules.submodel import SubModel

    run_dir, proc = trained
    results = json.loads((run_dir / "results.json").read_text())
    for key in GRID:
        for name in ("val/acc", "test/acc", "test/loss", "params", "macs", "latency_ms", "kept/test/acc"):
            assert f"{name}@{key}" in results, f"{name}@{key}"
        assert 0.0 <= results[f"test/acc@{key}"] <= 1.0 and results[f"latency_ms@{key}"] > 0
    assert results["method"] == "sorted" and results["best/submodel"] in GRID
    assert results["kept/test/acc@depth=2,width=32"] == pytest.approx(1.0)
    # the counts are those of the tiny ViT's slices (digits: 1 channel, 8x8, 10 classes)
    vit = SortedViT(SortedViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=10))
    for key in GRID:
        sub = SubModel.parse(key)
        assert results[f"params@{key}"] == count_params(vit, sub)
        assert results[f"macs@{key}"] == count_flops(vit, sub)
    assert results["params@depth=2,width=32"] == sum(p.numel() for p in vit.parameters())
    for f in (".hydra/config.yaml", "run_info.json", "checkpoints/last.ckpt", "results.md", "submodels.md",
              "submodels.csv", "pareto.png", "csv/metrics.csv", "exports/depth_1_width_16/model.pt"):
        assert (run_dir / f).exists(), f
    assert "| depth=1,width=16 |" in proc.stdout
    # every sub-network of the sandwich was trained: per-sub-network training losses were logged
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss@depth=1,width=16" in header and "train/loss@depth=2,width=32" in header


def test_exported_subnetwork_is_a_standalone_vit_with_the_slice_accuracy(trained):
    from modules.sorted_vit import SortedViT, SortedViTConfig

    run_dir, _ = trained
    folder = run_dir / "exports" / "depth_1_width_16"
    small = SortedViT(SortedViTConfig(**json.loads((folder / "config.json").read_text())))
    small.load_state_dict(torch.load(folder / "model.pt"))
    assert (small.config.num_hidden_layers, small.config.hidden_size) == (1, 16)
    results = json.loads((run_dir / "results.json").read_text())
    assert sum(p.numel() for p in small.parameters()) == results["params@depth=1,width=16"]


def test_eval_task_reproduces_the_grid_from_the_checkpoint(trained, env, tmp_path):
    run_dir, _ = trained
    proc = run([*TINY, "task=eval", f"eval.ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((run_dir / "results.json").read_text())
    after = json.loads((tmp_path / "results.json").read_text())
    for key in GRID:
        assert after[f"test/acc@{key}"] == pytest.approx(before[f"test/acc@{key}"], abs=1e-6)
        assert after[f"macs@{key}"] == before[f"macs@{key}"]


# --- bad input: one line naming the key and the valid choices; nothing written --------------

BAD = [
    ("nested.axes.width=[16,24]", ["nested.axes.width", "width=24", "[16, 32]", "multiples of"]),
    ("nested.axes.depth=[1,3]", ["nested.axes.depth", "depth=3", "[1, 2]"]),
    ("nested.axes.width=[]", ["nested.axes.width is empty", "[16, 32]"]),
    ("nested.axes=null", ["nested.axes is empty", "depth, width, heads, mlp"]),
    ("nested.eval_grid=[]", ["nested.eval_grid", "empty"]),
    ("nested.eval_grid={depth:[1,4]}", ["nested.eval_grid", "depth=4", "[1, 2]"]),
    ("nested.eval_grid={depth:[1],rank:[2]}", ["nested.eval_grid", "'rank'", "depth, width, heads, mlp"]),
    ("nested.method=small", ["nested.method='small'", "sorted, standard"]),
    ("nested.method='depth=1,width=8'", ["nested.method", "width=8", "[16, 32]"]),
    ("nested.independent_init=zeros", ["nested.independent_init", "random, slice"]),
    ("model.num_attention_heads=3", ["model.hidden_size=32", "model.num_attention_heads=3"]),
    ("model.name_or_path=/no/such/vit", ["model.name_or_path", "no such folder"]),
    ("data.source=mnist", ["data.source='mnist'", "digits, fashion_mnist"]),
    ("latency.device=tpu", ["latency.device='tpu'", "auto, cpu, cuda"]),
    ("sampling.num_random=x", ["sampling.num_random must be an integer"]),
]
if not torch.cuda.is_available():
    BAD.append(("latency.device=cuda", ["latency.device=cuda", "no CUDA device", "auto, cpu"]))


@pytest.mark.parametrize("override, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_one_line_config_error(override, words):
    from experiments.core.config import ConfigError
    from experiments.core.tasks import validate  # the group schemas, then the paradigm's own rules

    with pytest.raises(ConfigError) as err:
        validate(compose([*TINY, override]), machine=False)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("override, words", [BAD[0], BAD[1], BAD[4]], ids=["width", "depth", "empty-grid"])
def test_bad_input_on_the_command_line_exits_with_one_line_and_writes_nothing(override, words, env, tmp_path):
    proc = run([*TINY, override, f"hydra.run.dir={tmp_path}"], env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and all(w in last for w in words), last
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoints").exists()


# --- the baselines --------------------------------------------------------------------------

def test_standard_training_trains_only_the_full_model():
    from experiments.paradigms.vision import build

    module, _ = build(compose([*TINY, "nested.method=standard"]))
    assert [s.key for s in module.sampler.submodels(0)] == ["depth=2,width=32"]
    assert [s.key for s in module.sampler.submodels(7)] == ["depth=2,width=32"]
    assert sorted(s.key for s in module.eval_grid) == sorted(GRID)  # then every slice is evaluated


def test_independent_baseline_is_a_separate_small_model_that_only_trains_its_slice(tmp_path):
    import lightning.pytorch as pl

    from experiments.paradigms.vision import build
    from modules.sorted_vit import SortedViT, SortedViTConfig, count_params
    from modules.submodel import SubModel

    sub = SubModel.of(depth=1, width=16)
    pl.seed_everything(0)
    module, datamodule = build(compose([*TINY, "nested.method='depth=1,width=16'", "trainer.max_steps=3"]))
    model = module.model
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (1, 16, 1, 32)
    full = SortedViT(SortedViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=10))
    n_slice = count_params(full, sub)
    assert sum(p.numel() for p in model.parameters()) == n_slice < count_params(full)
    assert [s.key for s in module.eval_grid] == [sub.key]
    assert module.sampler.submodels(0) == [sub]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=datamodule)
    optimized = sum(p.numel() for group in trainer.optimizers[0].param_groups for p in group["params"])
    assert optimized == n_slice  # the optimizer holds exactly the slice's parameters
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # and it trained them


def test_independent_slice_init_starts_from_the_full_models_slice():
    import lightning.pytorch as pl

    from experiments.paradigms.vision import build

    overrides = [*TINY, "nested.method='depth=1,width=16'", "nested.independent_init=slice"]
    pl.seed_everything(0)
    small, _ = build(compose(overrides))
    pl.seed_everything(0)
    full, _ = build(compose([*TINY, "nested.method=standard"]))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small.model.eval()(x), full.model.eval()(x, {"depth": 1, "width": 16}))


def test_pretrained_hf_vit_loads_from_a_folder_with_a_new_head(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from experiments.core.config import ConfigError
    from experiments.paradigms.vision import build, validate

    torch.manual_seed(0)
    hf = ViTForImageClassification(ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32,
                                             num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                             num_labels=3))
    hf.save_pretrained(tmp_path / "vit")
    sizes = ["model.image_size=8", "model.patch_size=2", "model.num_channels=1", "model.hidden_size=32",
             "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.intermediate_size=64"]
    overrides = ["experiment=sortednet/quick", "model=vit_b16", f"model.name_or_path={tmp_path / 'vit'}", *sizes,
                 "nested.axes.depth=[1,2]", "nested.axes.width=[16,32]"]
    cfg = compose(overrides)
    validate(cfg)
    module, _ = build(cfg)
    vit = module.model
    assert vit.config.num_labels == 10 and vit.classifier.out_features == 10  # digits' classes, a new head
    assert torch.equal(vit.vit.layers[1].mlp.fc2.weight, hf.vit.layers[1].mlp.fc2.weight)
    assert torch.equal(vit.vit.embeddings.position_embeddings, hf.vit.embeddings.position_embeddings)
    with pytest.raises(ConfigError, match="model.hidden_size=64 but .* has hidden_size=32"):
        validate(compose([*overrides, "model.hidden_size=64"]))
    with pytest.raises(ConfigError, match="data.image_size=16: the model expects 8x8"):
        validate(compose([*overrides, "data.image_size=16"]))
    with pytest.raises(ConfigError, match=r"nested.axes.width: width=48 .*\[16, 32\]"):
        validate(compose([*overrides, "nested.axes.width=[16,48]"]))


def test_hub_checkpoint_is_checked_against_its_stated_sizes_before_any_download():
    from experiments.core.config import ConfigError
    from experiments.paradigms.vision import validate

    base = ["experiment=sortednet/vit_b16_cifar10"]
    validate(compose(base))  # offline: nothing is fetched to validate
    with pytest.raises(ConfigError, match=r"nested.axes.width: width=100 .*multiples of .* 64"):
        validate(compose([*base, "nested.axes.width=[64,100]"]))
    with pytest.raises(ConfigError, match=r"nested.axes.depth: depth=13 .*1..12"):
        validate(compose([*base, "nested.axes.depth=[6,13]"]))
    with pytest.raises(ConfigError, match="data.image_size=32: the model expects 224x224"):
        validate(compose([*base, "data.image_size=32"]))
    validate(compose([*base, "model.hidden_size=null", "nested.axes.width=[64,100]"]))  # unknown sizes: later


@pytest.mark.parametrize("name, labels", [("vit_b16_cifar10", 10), ("vit_b16_cifar100", 100)])
def test_full_scale_presets_compose_with_the_papers_grid(name, labels):
    from data.images import SOURCES

    cfg = compose([f"experiment=sortednet/{name}"])
    assert cfg.paradigm == "vision" and cfg.model.name_or_path == "google/vit-base-patch16-224"
    assert cfg.data.hf_id == SOURCES[cfg.data.source].hf_id and SOURCES[cfg.data.source].num_classes == labels
    assert cfg.data.image_size == 224 and cfg.trainer.accelerator == "gpu"
    assert len(cfg.nested.axes.depth) * len(cfg.nested.axes.width) == 144
    assert list(cfg.nested.axes.width) == list(range(64, 769, 64))


# --- the method comparison ------------------------------------------------------------------

def test_pareto_front():
    from experiments.results.pareto import pareto_front

    pts = [(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.6), (4, 0.9), (4, 0.8)]
    assert pareto_front(pts) == [(1, 0.5), (2, 0.7), (4, 0.9)]


def test_two_method_sweep_gives_the_comparison_table_and_pareto_plot(env, tmp_path):
    proc = run(["-m", *TINY, 'nested.method=sorted,"depth=1,width=16"', "trainer.max_steps=3",
                f"hydra.sweep.dir={tmp_path}"], env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(tmp_path.glob("*/results.json"))) == 2  # the command-line sweep replaced the preset's
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "report.md").exists()
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[0] == "| submodel | params | MACs | sorted test/acc | independent test/acc |"
    assert len(table) == 2 + len(GRID)
    small = next(row for row in table if row.startswith("| depth=1,width=16 |"))
    assert "–" not in small  # both methods scored the smallest sub-network
    big = next(row for row in table if row.startswith("| depth=2,width=32 |"))
    assert big.rstrip(" |").endswith("–")  # the independent job trained only its own size
    # the same files again, on demand
    (tmp_path / "pareto.png").unlink()
    again = subprocess.run([sys.executable, "-m", "experiments.results.pareto", str(tmp_path)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "pareto.png").exists()
    assert (tmp_path / "comparison.md").read_text().splitlines() == table
