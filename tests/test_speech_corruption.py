"""Noise at an SNR, reverberation at an RT60, determinism, condition strings, resampling."""
import numpy as np
import pytest

from modules.speech.audio import load_audio, resample
from modules.speech.corruption import (Condition, ConditionError, Corruptor, default_grid, energy_decay_db,
                                       estimate_rt60, snr_db, synthetic_rir)


def _speech_like(n=16_000, seed=0):
    """A vowel-like harmonic tone with a syllable envelope (not stationary, like speech)."""
    t = np.arange(n) / 16_000
    rng = np.random.default_rng(seed)
    tone = sum(np.sin(2 * np.pi * 140 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    return (tone * (0.2 + np.abs(np.sin(2 * np.pi * 3 * t)))).astype(np.float32)


@pytest.mark.parametrize("noise", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr", [20.0, 5.0, 0.0])
def test_noise_hits_requested_snr(noise, snr):
    speech = _speech_like()
    pool = {f"u{i}": _speech_like(12_000 + 3_000 * i, seed=i + 1) for i in range(4)}
    pool["target"] = speech
    noisy = Corruptor(seed=3, babble_pool=pool).apply(speech, Condition(snr=snr, noise=noise), "target")
    assert noisy.shape == speech.shape
    assert abs(snr_db(speech, noisy - speech) - snr) < 0.1


def test_babble_excludes_the_utterance_itself_and_needs_a_pool():
    speech = _speech_like()
    with pytest.raises(ConditionError, match="babble noise needs other utterances"):
        Corruptor(babble_pool={"only": speech}).apply(speech, "snr=5,noise=babble", "only")


@pytest.mark.parametrize("rt60", [0.3, 0.6, 0.9])
def test_impulse_response_decays_60_db_at_rt60(rt60):
    h = synthetic_rir(rt60, np.random.default_rng(0))
    assert abs(estimate_rt60(h) - rt60) / rt60 < 0.05
    edc = energy_decay_db(h)  # the decay curve itself reaches about -60 dB at t = RT60
    assert -66 < edc[int(rt60 * 16_000)] < -54


def test_reverberation_keeps_length_and_changes_signal():
    x = _speech_like()
    y = Corruptor().apply(x, "rt60=0.6", "u")
    assert y.shape == x.shape and not np.allclose(x, y)


@pytest.mark.parametrize("cond", ["snr=10,noise=white", "snr=5,noise=pink", "rt60=0.6", "rt60=0.3,snr=5,noise=white"])
def test_corruption_is_deterministic_by_seed(cond):
    x = _speech_like()
    a = Corruptor(seed=1).apply(x, cond, "utt-1")
    assert np.array_equal(a, Corruptor(seed=1).apply(x, cond, "utt-1"))  # same id + condition + seed
    assert not np.array_equal(a, Corruptor(seed=2).apply(x, cond, "utt-1"))  # another seed
    assert not np.array_equal(a, Corruptor(seed=1).apply(x, cond, "utt-2"))  # another utterance


def test_condition_strings_and_keys():
    assert Condition.parse("clean").is_clean and Condition.parse("clean").key == "clean"
    c = Condition.parse("snr=10,noise=white")
    assert (c.snr, c.noise, c.key, str(c)) == (10.0, "white", "snr10_white", "snr=10,noise=white")
    assert Condition.parse("rt60=0.6").key == "rt60_0.6"
    assert Condition.parse("noise=babble,snr=0,rt60=0.3").key == "rt60_0.3_snr0_babble"
    assert Condition.parse(str(c)) == c and Condition.parse("snr=10") == c  # white by default
    assert [g.key for g in default_grid()] == ["clean", "snr20_white", "snr10_white", "snr5_white", "snr0_white",
                                               "rt60_0.3", "rt60_0.6", "rt60_0.9"]


@pytest.mark.parametrize("bad, message", [
    ("loud", "unknown condition 'loud'"),
    ("snr=10,noise=brown", "unknown noise 'brown'; choose one of: white, pink, babble, file"),
    ("snr=ten", "needs a number"),
    ("noise=white", "'snr' and 'noise' go together"),
    ("rt60=-1", "rt60 must be > 0"),
])
def test_bad_condition_is_one_clear_line(bad, message):
    with pytest.raises(ConditionError, match=message) as err:
        Condition.parse(bad)
    assert "\n" not in str(err.value)


def test_noise_and_rir_files_from_folders(tmp_path):
    import soundfile as sf

    (tmp_path / "noise" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "noise" / "sub" / "hum.wav", np.sin(np.arange(8000) / 3.0) * 0.1, 16_000)
    (tmp_path / "rir").mkdir()
    sf.write(tmp_path / "rir" / "room.wav", synthetic_rir(0.4, np.random.default_rng(1)), 16_000)
    x = _speech_like()
    c = Corruptor(noise_dir=tmp_path / "noise", rir_dir=tmp_path / "rir")
    y = c.apply(x, "snr=5,noise=file", "u")
    assert abs(snr_db(x, y - x) - 5) < 0.1
    assert c.apply(x, "rir=file", "u").shape == x.shape
    with pytest.raises(ConditionError, match="noise=file needs a folder"):
        Corruptor().apply(x, "snr=5,noise=file", "u")
    with pytest.raises(ConditionError, match="has no audio files"):
        Corruptor(noise_dir=tmp_path / "missing").apply(x, "snr=5,noise=file", "u")


def test_resampling_warns_and_keeps_duration(tmp_path):
    import soundfile as sf

    x = np.sin(2 * np.pi * 440 * np.arange(22_050) / 22_050).astype(np.float32)
    with pytest.warns(UserWarning, match="22050 Hz resampled to 16000 Hz"):
        y = resample(x, 22_050)
    assert len(y) == 16_000
    sf.write(tmp_path / "a.wav", x, 22_050)
    with pytest.warns(UserWarning, match="resampled"):
        assert len(load_audio(tmp_path / "a.wav")) == 16_000
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav")
