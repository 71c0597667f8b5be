"""Dynamic-depth decoding: speculative decoders reproduce full-depth greedy; confidence early exit
with KV back-fill reproduces a cache-free recomputation of the same exit rule."""
import pytest
import torch

from modules.early_exit import (PAPER_THRESHOLDS, confidence_early_exit, greedy_generate, hf_self_speculative,
                                self_speculative_generate)
from modules.multi_exit import DecoderDepth, MultiExitError, multi_exit_hidden
from test_multi_exit import LAYERS, tiny_model

NEW = 16


def prompt(seed: int, length: int = 7) -> torch.Tensor:
    return torch.randint(3, 260, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "falcon"])
def test_self_speculative_equals_full_greedy(arch):
    model = tiny_model(arch)
    for seed, (exit_layer, num_draft) in enumerate([(1, 2), (2, 3), (3, 5)]):
        ids = prompt(seed)
        ref = greedy_generate(model, ids, NEW).tokens
        ours = self_speculative_generate(model, ids, exit_layer, NEW, num_draft=num_draft)
        assert ours.tokens == ref
        assert ours.stats["drafted"] > 0 and 0 <= ours.stats["acceptance_rate"] <= 1
        if arch != "falcon":
            assert hf_self_speculative(model, ids, exit_layer, NEW, num_draft=num_draft).tokens == ref


def test_self_speculative_stops_at_eos():
    model = tiny_model()
    ids = prompt(3)
    ref = greedy_generate(model, ids, NEW).tokens
    eos = ref[5]  # pretend the sixth greedy token is the end of the answer
    expected = ref[:ref.index(eos) + 1]
    assert greedy_generate(model, ids, NEW, eos_token_id=eos).tokens == expected
    assert self_speculative_generate(model, ids, 2, NEW, num_draft=3, eos_token_id=eos).tokens == expected
    assert confidence_early_exit(model, ids, [1, 2], [1.0, 1.0], NEW, eos_token_id=eos).tokens == expected


def test_hf_early_exit_refuses_falcon_in_one_line():
    with pytest.raises(MultiExitError, match="FalconModel runs every layer") as err:
        hf_self_speculative(tiny_model("falcon"), prompt(0), 2, NEW)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_thresholds_one_never_exit_and_zero_always_exit_first(arch):
    model = tiny_model(arch)
    depth = DecoderDepth(model)
    for seed in range(2):
        ids = prompt(seed)
        ref = greedy_generate(model, ids, NEW).tokens
        never = confidence_early_exit(model, ids, [1, 2, 3], [1.0, 1.0, 1.0], NEW)
        assert never.tokens == ref
        assert never.stats["exit_counts"] == {1: 0, 2: 0, 3: 0, LAYERS: NEW}
        always = confidence_early_exit(model, ids, [1, 2, 3], [0.0, 0.0, 0.0], NEW)
        depth.set_depth(1)
        assert always.tokens == greedy_generate(model, ids, NEW).tokens  # the 1-layer model's greedy
        depth.set_depth(LAYERS)
        assert always.stats["exit_counts"][1] == NEW and always.stats["mean_exit_layer"] == 1.0


def naive_early_exit(model, ids, exits, thresholds, new_tokens):
    """The same exit rule with no cache at all: every step re-runs the whole sequence at full depth."""
    n = DecoderDepth(model).num_layers
    head = model.get_output_embeddings()
    seq, tokens, used = ids, [], []
    for _ in range(new_tokens):
        hidden = multi_exit_hidden(model, seq, None, list(exits) + [n])
        for e, t in zip(list(exits) + [n], list(thresholds) + [0.0]):
            conf, tok = head(hidden[e][:, -1]).float().softmax(-1).max(-1)
            if t < 1.0 and float(conf) >= t:
                break
        tokens.append(int(tok))
        used.append(e)
        seq = torch.cat([seq, tok[None]], 1)
    return tokens, used


def test_mixed_exits_with_backfill_equal_cache_free_recomputation():
    model = tiny_model()
    ids = prompt(4)
    # thresholds at the median confidence of exits 1 and 2 along the full-greedy path: a mix of exits
    with torch.no_grad():
        seq = torch.cat([ids, torch.tensor([greedy_generate(model, ids, NEW).tokens])], 1)
        hidden = multi_exit_hidden(model, seq, None, [1, 2])
        head = model.get_output_embeddings()
        thr = [float(head(hidden[e][0, ids.shape[1] - 1:]).softmax(-1).max(-1).values.median()) for e in (1, 2)]
        expected, used = naive_early_exit(model, ids, [1, 2, 3], thr + [1.0], NEW)
    assert len(set(used)) >= 2, used  # the test needs tokens exiting at different depths
    out = confidence_early_exit(model, ids, [1, 2, 3], thr + [1.0], NEW)
    assert out.tokens == expected
    assert out.stats["exit_counts"] == {e: used.count(e) for e in (1, 2, 3, LAYERS)}
    assert out.stats["mean_exit_layer"] == pytest.approx(sum(used) / len(used))


def test_paper_thresholds_cover_llama2_13b_exits():
    assert list(PAPER_THRESHOLDS) == list(range(12, 37, 4))
    assert list(PAPER_THRESHOLDS.values()) == [0.95, 0.95, 0.9, 0.9, 0.8, 0.8, 0.7]


def test_bad_decoding_inputs_are_one_clear_line():
    model = tiny_model()
    cases = [
        (lambda: confidence_early_exit(model, prompt(0), [2, LAYERS], [0.9, 0.9], 4), "must lie below"),
        (lambda: confidence_early_exit(model, prompt(0), [1, 2], [0.9], 4), "1 thresholds for 2 exits"),
        (lambda: confidence_early_exit(model, prompt(0), [9], [0.9], 4), "outside the valid range 1..4"),
        (lambda: self_speculative_generate(model, prompt(0), LAYERS, 4), r"outside the valid range 1..3"),
        (lambda: hf_self_speculative(model, prompt(0), 0, 4), r"outside the valid range 1..3"),
        (lambda: self_speculative_generate(model, torch.ones(2, 3, dtype=torch.long), 1, 4), "batch 1"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            fn()
        assert "\n" not in str(err.value)


def test_benchmark_runs_on_tiny_random_model(tmp_path):
    from experiments.benchmarks import soft_decoding

    out = tmp_path / "bench.json"
    rows = soft_decoding.main(["--model", "random:llama", "--random-config",
                               '{"vocab_size": 260, "hidden_size": 64, "intermediate_size": 128, '
                               '"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}',
                               "--exit-layer", "2", "--exits", "1", "2", "3", "--thresholds", "1", "1", "1",
                               "--max-new-tokens", "8", "--num-prompts", "2", "--no-chat-template",
                               "--out", str(out)])
    by_method = {r["method"]: r for r in rows}
    assert by_method["full greedy"]["speedup"] == 1.0
    for method in ("hf assistant_early_exit", "ours self-speculative", "confidence early exit"):
        assert by_method[method]["exact_match"] == 1.0 and by_method[method]["token_agreement"] == 1.0
    assert by_method["confidence early exit"]["mean_exit_layer"] == 4.0
    assert out.exists()
