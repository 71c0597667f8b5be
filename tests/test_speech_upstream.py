"""Frozen-encoder upstream and the feature cache, on a tiny random Whisper (nothing downloaded)."""
import numpy as np
import pytest
import torch

from modules.speech.cache import FeatureCache
from modules.speech.corruption import Corruptor
from modules.speech.upstream import WhisperUpstream


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    from tests.conftest import save_tiny_whisper

    return save_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"), d_model=32)


def _waves(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return {f"u{i}": (0.1 * rng.standard_normal(n)).astype(np.float32) for i, n in enumerate(lengths)}


def test_hidden_states_match_hf_encoder_when_padded_to_30s(tiny_whisper_dir):
    up = WhisperUpstream(tiny_whisper_dir, pad_to_30s=True)
    waves = list(_waves([16_000, 9_000]).values())
    hidden, lengths = up(waves)
    assert hidden.shape == (3, 2, 1500, 32) and up.num_layers == 3
    assert lengths.tolist() == [50, 29]  # ceil(samples / 320)
    ref = up.encoder(up.features(waves), output_hidden_states=True).hidden_states
    assert torch.allclose(hidden, torch.stack(ref), atol=1e-5)
    assert not any(p.requires_grad for p in up.parameters())


def test_short_clip_path_cuts_the_position_table(tiny_whisper_dir):
    up = WhisperUpstream(tiny_whisper_dir, pad_to_30s=False)
    hidden, lengths = up(list(_waves([16_000, 9_000]).values()))
    assert hidden.shape == (3, 2, 50, 32) and lengths.tolist() == [50, 29]
    # embeddings (layer 0) of the valid frames barely depend on the padding; later layers may drift
    h30, _ = WhisperUpstream(tiny_whisper_dir, pad_to_30s=True)(list(_waves([16_000]).values()))
    h, _ = up(list(_waves([16_000]).values()))
    assert torch.nn.functional.cosine_similarity(h30[0, 0, :49], h[0, 0, :49], dim=-1).min() > 0.99


def test_cache_equals_fresh_pass_and_encodes_once_per_utterance_and_condition(tiny_whisper_dir, tmp_path):
    up = WhisperUpstream(tiny_whisper_dir, pad_to_30s=False)
    waves = _waves([16_000, 16_000, 8_000, 12_345])
    cache = FeatureCache(tmp_path, up, Corruptor(seed=0), batch_size=2)
    for _ in range(2):  # the second round is served from disk
        for cond in ("clean", "snr=10,noise=white"):
            feats = cache.get("test", waves, cond)
    assert dict(cache.passes) == {("test", "clean"): 4, ("test", "snr10_white"): 4}
    clean = cache.get("test", waves, "clean")
    assert clean.ids == list(waves) and clean.lengths.tolist() == [50, 50, 25, 39]
    for i, (uid, w) in enumerate(waves.items()):
        fresh, n = up([w])
        assert torch.allclose(clean[i], fresh[:, 0, : int(n[0])], atol=2e-2, rtol=1e-2)  # fp16 on disk
    noisy_fresh, _ = up([Corruptor(seed=0).apply(waves["u0"], "snr=10,noise=white", "u0")])
    assert torch.allclose(feats[0], noisy_fresh[:, 0, :50], atol=2e-2, rtol=1e-2)
    batch, lengths = clean.batch([2, 0])
    assert batch.shape == (3, 2, 50, 32) and lengths.tolist() == [25, 50] and batch[:, 0, 25:].abs().sum() == 0
    assert clean.pooled().shape == (4, 3, 32)


def test_cache_is_invalidated_when_audio_seed_or_pad_switch_changes(tiny_whisper_dir, tmp_path):
    up = WhisperUpstream(tiny_whisper_dir, pad_to_30s=False)
    waves = _waves([8_000, 8_000])
    cache = FeatureCache(tmp_path, up, Corruptor(seed=0))
    cache.get("s", waves, "snr=5,noise=white")
    changed = dict(waves, u1=waves["u1"] * 0.5)
    cache.get("s", changed, "snr=5,noise=white")  # audio content changed
    FeatureCache(tmp_path, up, Corruptor(seed=1)).get("s", waves, "snr=5,noise=white")  # seed changed
    assert cache.passes[("s", "snr5_white")] == 4
    assert len(list(tmp_path.glob("s__snr5_white__*.safetensors"))) == 1  # stale shards removed
    padded = FeatureCache(tmp_path, WhisperUpstream(tiny_whisper_dir, pad_to_30s=True))
    padded.get("s", waves)
    assert padded.passes[("s", "clean")] == 2
    again = FeatureCache(tmp_path, up, Corruptor(seed=1))
    again.get("s", waves, "snr=5,noise=white")
    assert sum(again.passes.values()) == 0  # same key as the seed-1 shard written above
