"""The speech paradigm through run.py: a tiny random Whisper (2 layers, d=64) on a generated Speech Commands
folder (tones, no espeak), the feature cache built once and reused, and bad input as one line."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import ROOT, run

WORDS = {"yes": 300.0, "no": 700.0, "up": 1500.0, "dog": 2500.0}  # dog -> _unknown_
CONDITIONS = ["clean", "snr10_white", "rt60_0.3"]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from tests.conftest import save_tiny_whisper

    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"), d_model=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Speech Commands layout: 4 words x 6 speakers of 0.4-s tones; speaker s4 is validation, s5 test."""
    root = tmp_path_factory.mktemp("speech_commands")
    rng = np.random.default_rng(0)
    t = np.arange(6400) / 16_000
    for word, freq in WORDS.items():
        (root / word).mkdir()
        for s in range(6):
            wave = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.02 * s) * t) + 0.01 * rng.standard_normal(len(t))
            sf.write(root / word / f"s{s}_nohash_0.wav", wave.astype(np.float32), 16_000)
    (root / "validation_list.txt").write_text("".join(f"{w}/s4_nohash_0.wav\n" for w in WORDS))
    (root / "testing_list.txt").write_text("".join(f"{w}/s5_nohash_0.wav\n" for w in WORDS))
    return str(root)


def tiny_args(model, root, run_dir, layers="[weighted,0,2]"):
    return ["experiment=whisper/quick", "data=speech_commands", f"data.root={root}", f"model.name_or_path={model}",
            "model.encoder_layers=null", f"probe.layers={layers}", f"corruption.conditions=[{','.join(CONDITIONS)}]",
            "trainer.max_steps=6", "data.batch_size=8", "probe.hidden_dim=16", "trainer.log_every_n_steps=2",
            f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, env, tiny_whisper, corpus):
    run_dir = tmp_path_factory.mktemp("run1")
    proc = run(tiny_args(tiny_whisper, corpus, run_dir), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_every_layer_and_condition_is_scored_and_plotted(first_run):
    run_dir, proc = first_run
    results = json.loads((run_dir / "results.json").read_text())
    for layer in (-1, 0, 2):  # -1: the weighted sum
        assert f"val/acc@condition=clean,layer={layer}" in results
        for condition in CONDITIONS:
            assert 0.0 <= results[f"test/acc@condition={condition},layer={layer}"] <= 1.0
            assert f"test/loss@condition={condition},layer={layer}" in results
    assert "test/acc@condition=clean,layer=1" not in results  # only the requested layer settings
    weights = [results[f"weights/layer_{i}"] for i in range(3)]  # 2 layers + embeddings
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and max(weights) - min(weights) > 0  # trained, not uniform
    for condition in CONDITIONS:  # chosen on the condition's validation accuracy, reported on its test
        best = results[f"best/submodel@condition={condition}"]
        assert best in {"layer=-1", "layer=0", "layer=2"}
        val = {layer: results[f"val/acc@condition={condition},layer={layer}"] for layer in (-1, 0, 2)}
        assert results[f"val/acc@condition={condition},{best}"] == max(val.values())
        assert results[f"best/test/acc@condition={condition}"] == results[f"test/acc@condition={condition},{best}"]
    for name in ("accuracy_per_layer.png", "accuracy_per_condition.png", "layer_weights.png", "probes.md",
                 "results.md", "run_info.json", "probes/weighted/metrics.json", "probes/layer_2/checkpoints/last.ckpt",
                 "csv/layer_0/metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "accuracy_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert "| weighted |" in proc.stdout and "test/acc@snr10_white" in (run_dir / "probes.md").read_text()


def test_cache_encodes_each_utterance_once_per_condition_and_is_reused(first_run, tmp_path, env, tiny_whisper,
                                                                        corpus):
    run_dir, _ = first_run
    cache = json.loads((run_dir / "cache.json").read_text())
    # 4 words x 4 training speakers; 4 validation and 4 test clips, both under 3 conditions
    expected = {"speech_commands-train@clean": 16, **{f"speech_commands-valid@{c}": 4 for c in CONDITIONS},
                **{f"speech_commands-test@{c}": 4 for c in CONDITIONS}}
    assert cache["passes"] == expected
    assert cache["cache/encoder_passes"] == cache["cache/utterance_conditions"] == 40
    again = run(tiny_args(tiny_whisper, corpus, tmp_path / "run2", layers="[1]"), env)  # another run, same audio
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "run2" / "cache.json").read_text())
    assert second["cache/encoder_passes"] == 0 and second["passes"] == {} and second["cache/shards_reused"] == 7
    results = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert sorted(k for k in results if k.startswith("test/acc@")) == \
        sorted(f"test/acc@condition={c},layer=1" for c in CONDITIONS)
    assert not any(k.startswith("weights/") for k in results)  # no weighted probe in this run


def test_rerun_keeps_finished_probes_and_continues_the_rest(first_run, env, tiny_whisper, corpus):
    run_dir, _ = first_run
    before = json.loads((run_dir / "results.json").read_text())
    again = run(tiny_args(tiny_whisper, corpus, run_dir), env)  # finished: nothing is redone
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-2000:]
    (run_dir / "results.json").unlink()  # as if killed after two probes and during the third
    (run_dir / "probes" / "layer_2" / "metrics.json").unlink()
    again = run(tiny_args(tiny_whisper, corpus, run_dir), env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "probe weighted: finished earlier" in again.stdout and "probe layer_0: finished earlier" in again.stdout
    assert "probe layer_2: resuming from" in again.stdout
    after = json.loads((run_dir / "results.json").read_text())
    for key, value in before.items():
        if key.startswith(("test/", "val/", "weights/", "best/")):
            assert after[key] == pytest.approx(value, abs=1e-6), key
    assert after["cache/encoder_passes"] == 0


@pytest.mark.parametrize("override, message", [
    ("corruption.conditions=[clean,snr10_purple]", "corruption.conditions: unknown noise 'purple'"),
    ("data.task=sneezes", "data.task='sneezes' is not an option; valid choices: keywords, speakers"),
    ("data=speech_commands", "data.root={empty} is empty; it should hold the speech_commands corpus"),
])
def test_bad_input_is_one_line_before_anything_loads(override, message, tmp_path, env):
    import re

    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["experiment=whisper/quick", override, f"hydra.run.dir={tmp_path / 'run'}"]
    if override == "data=speech_commands":
        args.append(f"data.root={empty}")
    proc = run(args, env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(message.replace("{empty}", re.escape(repr(str(empty)))), lines[0]), lines[0]
    assert not (tmp_path / "run" / "cache.json").exists() and not (tmp_path / "run" / "run_info.json").exists()


@pytest.mark.parametrize("overrides, message", [
    (["corruption.conditions=[clean,loud]"], "corruption.conditions: unknown condition 'loud'"),
    (["corruption.conditions=[clean,snr10_white,'snr=10,noise=white']"], "names a condition twice"),
    (["probe.layers=[weighted,7]"], "probe.layers: layer 7 does not exist; whisper-tiny.en has hidden states 0..4"),
    (["probe.layers=first"], "probe.layers='first': give all, or a list"),
    (["data=intents_synth", "probe.head=mean_pool"], "probe.head=mean_pool does not fit data.task=intents"),
    (["data=voxceleb1"], "data.task=voxceleb1 reads a corpus folder: set data.root"),
    (["+data.colour=red"], "data.colour is not an option of data"),
    (["model.device=tpu"], "model.device='tpu' is not an option; valid choices: auto, cpu, cuda"),
])
def test_more_bad_input_is_one_line_in_process(overrides, message):
    from experiments.core import tasks
    from experiments.core.config import ConfigError
    from tests.test_configs import compose_cfg

    cfg = compose_cfg(["experiment=whisper/quick", *overrides])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")) as err:
        tasks.validate(cfg, machine=True)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_encoder_on_a_cpu_machine_is_one_line():
    from experiments.core import tasks
    from experiments.core.config import ConfigError
    from tests.test_configs import compose_cfg

    with pytest.raises(ConfigError, match="model.device=cuda but this machine has no CUDA device"):
        tasks.validate(compose_cfg(["experiment=whisper/quick", "model.device=cuda"]), machine=True)


def test_condition_keys_parse_back_and_presets_name_every_grid_condition():
    from data.speech_tasks import parse_condition
    from modules.speech.corruption import Condition, default_grid
    from tests.test_configs import compose_cfg

    for c in [*default_grid("white"), *default_grid("pink"), *default_grid("babble"),
              Condition(snr=5.0, noise="babble", rt60=0.3, rir="synthetic"), Condition(rir="file")]:
        assert parse_condition(c.key) == c and parse_condition(str(c)) == c
    grid = compose_cfg(["experiment=whisper/ks_speech_commands"]).corruption.conditions
    assert [parse_condition(k).key for k in grid] == list(grid) and len(grid) == 16


def test_intent_probe_is_right_only_when_all_three_slots_are():
    from modules.probe_module import SpeechProbe

    probe = SpeechProbe(num_layers=3, input_dim=8, num_classes=[4, 4, 4], layer=1, head="intent", hidden_dim=4)
    assert probe.cell.key == "layer=1" and probe.layer_weights() == [0.0, 1.0, 0.0]
    batch = {"hidden": torch.randn(3, 2, 5, 8), "lengths": torch.tensor([5, 3])}
    logits = probe(batch["hidden"], batch["lengths"])
    preds = torch.stack([lg.argmax(-1) for lg in logits], dim=1)  # (2, 3)
    labels = preds.clone()
    labels[1, 2] = (labels[1, 2] + 1) % 4  # second utterance: one slot wrong
    _, correct = probe.loss_and_correct({**batch, "labels": labels})
    assert correct.tolist() == [True, False]
    weighted = SpeechProbe(num_layers=3, input_dim=8, num_classes=[5], hidden_dim=4)
    assert weighted.cell.key == "layer=-1" and weighted.layer_weights() == pytest.approx([1 / 3] * 3)


def test_benchmark_counts_one_pass_per_clip_and_condition(tiny_whisper, tmp_path):
    from experiments.benchmarks.speech_cache import cached_vs_recomputed, count_passes
    from modules.speech.upstream import WhisperUpstream

    rng = np.random.default_rng(1)
    waves = {f"u{i}": (0.1 * rng.standard_normal(3200 + 320 * (i % 2))).astype(np.float32) for i in range(4)}
    up = WhisperUpstream(tiny_whisper, pad_to_30s=False)
    passes = count_passes(up, waves, ["clean", "snr10_white"], tmp_path / "a")
    assert passes["first"] == {("bench", "clean"): 4, ("bench", "snr10_white"): 4} and passes["second"] == {}
    speed = cached_vs_recomputed(up, waves, torch.tensor([0, 1, 0, 1]), probes=2, steps=2, batch_size=2,
                                 folder=tmp_path / "b")
    assert speed["encoder_passes_cached"] == 4 and speed["encoder_passes_recomputed"] == 8 and speed["cached_s"] > 0


def test_single_layer_probe_reads_the_same_from_a_gathered_batch():
    from modules.probe_module import SpeechProbe
    from modules.speech.cache import CachedFeatures

    torch.manual_seed(0)
    lengths = torch.tensor([3, 5, 2])
    hidden = torch.randn(4, int(lengths.sum()), 8).half()  # (L+1, sum T, C) as a shard holds it
    feats = CachedFeatures(["a", "b", "c"], hidden, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))
    full, full_len = feats.batch([2, 0, 1])
    one, one_len = feats.batch([2, 0, 1], layer=2)
    assert one.shape == (1, 3, 5, 8) and torch.equal(one[0], full[2]) and torch.equal(one_len, full_len)
    probe = SpeechProbe(num_layers=4, input_dim=8, num_classes=[3], layer=2, hidden_dim=4)
    assert probe.probed_layer == 2 and SpeechProbe(4, 8, [3], hidden_dim=4).probed_layer is None
    assert torch.equal(probe(full, full_len), probe(one, one_len))
