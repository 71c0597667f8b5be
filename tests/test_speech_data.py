"""Corpus loaders on tiny fixture layouts (generated wavs) and the espeak-ng synthetic sets."""
import shutil

import numpy as np
import pytest
import soundfile as sf

from data import speech_synth
from data.speech_corpora import (DataFolderError, KS_CLASSES, fluent_speech_commands, iemocap, speech_commands,
                                 voxceleb1_sid)


def _wav(path, seconds=0.5, sr=16_000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32), sr)


def test_speech_commands_layout(tmp_path):
    for word, spk in [("yes", "aa"), ("yes", "bb"), ("no", "aa"), ("dog", "cc"), ("stop", "dd")]:
        _wav(tmp_path / word / f"{spk}_nohash_0.wav")
    _wav(tmp_path / "_background_noise_" / "white.wav", seconds=5)
    (tmp_path / "validation_list.txt").write_text("yes/bb_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("stop/dd_nohash_0.wav\n")
    ks = speech_commands(tmp_path, silence_per_split=(2, 1, 1))
    by_id = {it.id: it for it in ks.items}
    assert by_id["yes/bb_nohash_0.wav"].split == "valid" and by_id["stop/dd_nohash_0.wav"].split == "test"
    assert by_id["dog/cc_nohash_0.wav"].label == KS_CLASSES.index("_unknown_")
    assert by_id["yes/aa_nohash_0.wav"].speaker == "aa" and by_id["no/aa_nohash_0.wav"].label == KS_CLASSES.index("no")
    silence = [it for it in ks.items if it.label == KS_CLASSES.index("_silence_")]
    assert sorted(it.split for it in silence) == ["test", "train", "train", "valid"]
    assert silence[0].audio().shape == (16_000,)
    assert ks.num_classes == [12] and ks.labels("test").shape == (2,)


def test_fluent_speech_commands_layout(tmp_path):
    header = "index,path,speakerId,transcription,action,object,location\n"
    rows = {"train": [("wavs/speakers/s1/a.wav", "s1", "Turn on the lights", "activate", "lights", "none"),
                      ("wavs/speakers/s1/b.wav", "s1", "Heat up the kitchen", "increase", "heat", "kitchen")],
            "valid": [("wavs/speakers/s2/c.wav", "s2", "Turn off the lights", "deactivate", "lights", "none")],
            "test": [("wavs/speakers/s3/d.wav", "s3", "Lower the heat", "decrease", "heat", "none")]}
    (tmp_path / "data").mkdir()
    for split, rs in rows.items():
        (tmp_path / "data" / f"{split}_data.csv").write_text(header + "".join(f"{i},{','.join(r)}\n" for i, r in enumerate(rs)))
        for r in rs:
            _wav(tmp_path / r[0])
    fsc = fluent_speech_commands(tmp_path)
    assert fsc.classes["action"] == ["activate", "deactivate", "decrease", "increase"]
    assert fsc.split("train")[1].label == (3, 0, 0)  # increase, heat, kitchen
    assert fsc.labels("test").tolist() == [[2, 0, 1]] and fsc.split("valid")[0].audio().shape == (8_000,)


def test_voxceleb1_layout(tmp_path):
    lines = ["1 id10001/vid1/00001.wav", "1 id10002/vid9/00001.wav", "2 id10001/vid2/00001.wav", "3 id10002/vid3/00002.wav"]
    (tmp_path / "iden_split.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        _wav(tmp_path / "wav" / line.split()[1])
    vox = voxceleb1_sid(tmp_path)
    assert vox.classes["label"] == ["id10001", "id10002"]
    assert [(it.split, it.label) for it in vox.items] == [("train", 0), ("train", 1), ("valid", 0), ("test", 1)]


def test_iemocap_leave_one_session_out(tmp_path):
    rows = {1: [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "exc"), ("Ses01F_impro01_F001", "fru")],
            2: [("Ses02M_script01_1_F000", "ang"), ("Ses02M_script01_1_M001", "sad")]}
    for k, utts in rows.items():
        ev = tmp_path / f"Session{k}" / "dialog" / "EmoEvaluation"
        ev.mkdir(parents=True)
        dialog = utts[0][0].rsplit("_", 1)[0]
        ev.joinpath(f"{dialog}.txt").write_text("".join(f"[1.0 - 2.0]\t{u}\t{e}\t[2.5, 2.5, 2.5]\n" for u, e in utts))
        for u, _ in utts:
            _wav(tmp_path / f"Session{k}" / "sentences" / "wav" / dialog / f"{u}.wav")
    fold2 = iemocap(tmp_path, fold=2, valid_fraction=0.0)
    assert [(it.id, it.label, it.split) for it in fold2.items] == [
        ("Ses01F_impro01_F000", 0, "train"), ("Ses01F_impro01_M000", 1, "train"),  # exc -> hap; fru dropped
        ("Ses02M_script01_1_F000", 2, "test"), ("Ses02M_script01_1_M001", 3, "test")]
    assert fold2.items[1].speaker == "Ses01M" and fold2.split("test")[0].audio().shape == (8_000,)
    with pytest.raises(ValueError, match="fold must be 1..5"):
        iemocap(tmp_path, fold=6)


@pytest.mark.parametrize("loader", [speech_commands, fluent_speech_commands, voxceleb1_sid, iemocap])
def test_missing_or_empty_folder_is_one_clear_line(loader, tmp_path):
    with pytest.raises(DataFolderError, match="is missing; expected") as err:
        loader(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFolderError, match="is empty; expected"):
        loader(tmp_path / "empty")


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")


@needs_espeak
def test_synthetic_set_is_cached_deterministic_and_16k(tmp_path, monkeypatch):
    rows = [("t/yes/en-us+m1", 0, "train", "en-us+m1", ["-v", "en-us+m1"], "yes"),
            ("t/no/en-gb+f2", 1, "test", "en-gb+f2", ["-v", "en-gb+f2", "-s", "180"], "no"),
            ("t/_silence_/0", 11, "train", "", None, "")]
    monkeypatch.setitem(speech_synth.RECIPES, "keywords", lambda: iter(rows))
    builds = []
    for cache in ("a", "b"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / cache))
        folder = speech_synth.build_synthetic("keywords")
        assert folder.parent == tmp_path / cache / "efficient-transformers-lab" / "speech"
        builds.append(speech_synth.synthetic_speech("keywords"))
    assert speech_synth.build_synthetic("keywords") == folder  # cached: same folder, not rebuilt
    a, b = builds
    assert [it.id for it in a.items] == [r[0] for r in rows] and a.labels("train").tolist() == [0, 11]
    for x, y in zip(a.items, b.items):
        assert np.array_equal(x.wave, y.wave)
    yes = a.items[0].wave  # espeak's 22,050 Hz became 16 kHz: "yes" lasts ~0.3-1.0 s
    assert 0.3 * 16_000 < len(yes) < 1.0 * 16_000 and np.abs(yes).max() > 0.05


def test_missing_espeak_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(speech_synth.shutil, "which", lambda name: None)
    with pytest.raises(speech_synth.SynthError, match="espeak-ng not found: install it"):
        speech_synth.build_synthetic("keywords")
    with pytest.raises(ValueError, match="unknown synthetic speech set 'digits'"):
        speech_synth.build_synthetic("digits")


def test_synthetic_recipes_have_the_documented_classes():
    kw = list(speech_synth.RECIPES["keywords"]())
    assert sorted({r[1] for r in kw}) == list(range(12))
    assert len(speech_synth.VOICES) == 24 and {r[3] for r in speech_synth.RECIPES["speakers"]()} == set(speech_synth.VOICES)
    assert {r[2] for r in kw} == {"train", "valid", "test"}
    test_voices = {r[3] for r in kw if r[2] == "test" and r[3]}
    assert test_voices.isdisjoint({r[3] for r in kw if r[2] == "train"})  # keyword test voices are unseen
    intents = list(speech_synth.RECIPES["intents"]())
    assert len({r[1] for r in intents}) == 4 * 4 * 4
