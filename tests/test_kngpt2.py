"""KnGPT2's pure pieces: the compression transform, GPT-2's Conv1D / fused Q/K/V, the ILKD terms, the LM data."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modules.compression import (CompressionError, compress, decoder_blocks, layers_matching, parameter_counts,
                                 plan_compression, select_layers, spread, truncate_layers)
from modules.ilkd import (ILKDWeights, attention_term, ilkd_objective, logit_kl, masked_mse, record,
                          use_recording_attention)
from modules.kronecker import FusedKroneckerLinear, KroneckerEmbedding, KroneckerLinear, KroneckerTiedHead
from tests.conftest import tiny_llama_config


def tiny_gpt2(**kw):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=260, n_embd=32, n_layer=4, n_head=4, n_positions=64, bos_token_id=257,
                        eos_token_id=258, **kw)
    return GPT2LMHeadModel(config).eval()


def tiny_llama(**kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(**{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
                                                 **kw})).eval()


def batch(vocab=260, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a padded row
    return ids, mask


# --- the transform -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_gpt2, lambda: tiny_llama(tie_word_embeddings=True), tiny_llama])
def test_full_rank_factors_reproduce_the_dense_logits(make):
    """A (2 x 1) ⊗ B at rank 2 (= min(a_out*a_in, b_out*b_in)) and the embedding at rank f are exact."""
    dense = make()
    student = copy.deepcopy(dense)
    steps = compress(student, {"layers": "all", "a_shape": [2, 1], "rank": 2, "embedding_factor": 2,
                               "embedding_rank": 2})
    assert {s.kind for s in steps} >= {"embedding", "linear"}
    assert isinstance(student.get_input_embeddings(), KroneckerEmbedding)
    ids, mask = batch()
    with torch.no_grad():
        ref = dense(input_ids=ids, attention_mask=mask).logits
        out = student(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=2e-4, rtol=1e-4)
    if dense.config.tie_word_embeddings:  # the tie survives: the head reads the embedding's factors
        assert isinstance(student.get_output_embeddings(), KroneckerTiedHead)
        assert parameter_counts(student)["params/head"] == 0


def test_rank_one_is_the_nearest_product_not_the_dense_map():
    dense = tiny_llama()
    student = copy.deepcopy(dense)
    compress(student, {"layers": [1], "embedding": False, "a_shape": [2, 1], "rank": 1})
    layer = student.model.layers[1].self_attn.q_proj
    W = dense.model.layers[1].self_attn.q_proj.weight
    err = (torch.linalg.norm(W - layer.weight) / torch.linalg.norm(W)).item()
    assert 0.1 < err < 1 and abs(err - layer.approx_error) < 1e-4
    assert isinstance(student.model.layers[0].self_attn.q_proj, nn.Linear)  # block 0 untouched


def test_gpt2_conv1d_decomposition_matches_f_linear_on_the_transposed_weight():
    model = tiny_gpt2()
    conv = model.transformer.h[0].mlp.c_fc  # Conv1D, weight stored (in, out)
    x = torch.randn(3, 5, conv.weight.shape[0])
    exact = KroneckerLinear.from_dense(conv, (2, 1), rank=2)
    torch.testing.assert_close(exact(x), F.linear(x, conv.weight.T, conv.bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact(x), conv(x), atol=1e-5, rtol=1e-5)
    # fused Q/K/V: split first, so each rank-1 part is the nearest product of its own slice of W^T
    c_attn = model.transformer.h[0].attn.c_attn
    fused = FusedKroneckerLinear.from_dense(c_attn, 3, (2, 1), rank=1)
    for part, W, b in zip(fused.parts, c_attn.weight.T.chunk(3, 0), c_attn.bias.chunk(3)):
        one = KroneckerLinear.from_dense(W, (2, 1), rank=1, bias=b)
        torch.testing.assert_close(part.weight, one.weight)
    full = FusedKroneckerLinear.from_dense(c_attn, 3, (2, 1), rank=2)
    torch.testing.assert_close(full(x[..., :32]), c_attn(x[..., :32]), atol=1e-5, rtol=1e-5)


def test_random_init_keeps_shapes_and_bias_but_not_the_weights():
    conv = tiny_gpt2().transformer.h[0].attn.c_proj
    nearest = KroneckerLinear.from_dense(conv, (2, 1), init="nearest")
    torch.manual_seed(3)
    rand = KroneckerLinear.from_dense(conv, (2, 1), init="random")
    assert rand.A.shape == nearest.A.shape and torch.equal(rand.bias, conv.bias)
    assert not torch.allclose(rand.weight, nearest.weight)
    emb = KroneckerEmbedding.from_dense(tiny_gpt2().transformer.wte.weight, 2, init="random")
    assert emb.approx_error is None
    with pytest.raises(ValueError, match="init='svd' is not an option"):
        KroneckerLinear.from_dense(conv, (2, 1), init="svd")


def test_layer_selection_and_bad_inputs():
    assert select_layers("odd", 6) == [1, 3, 5] and select_layers("even", 5) == [0, 2, 4]
    model = tiny_gpt2()
    with pytest.raises(CompressionError, match=r"block 7 does not exist; this model has 4 blocks"):
        plan_compression(model, {"layers": [1, 7]})
    with pytest.raises(CompressionError, match=r"compression.a_shape=\[5, 1\] does not fit"):
        plan_compression(model, {"a_shape": [5, 1]})
    with pytest.raises(CompressionError, match="has no linear map 'q_proj'; valid choices: attn.c_attn"):
        plan_compression(model, {"targets": ["q_proj"]})
    with pytest.raises(CompressionError, match="embedding_factor=3 does not divide"):
        plan_compression(model, {"embedding_factor": 3})


def test_planned_counts_are_the_counts_of_the_compressed_model():
    for make in (tiny_gpt2, tiny_llama):
        model = make()
        before = parameter_counts(model)["params/total"]
        steps = plan_compression(model, {"layers": "odd"})
        compress(model, {"layers": "odd"})
        saved = sum(s.dense_params - s.kron_params for s in steps)
        assert parameter_counts(model)["params/total"] == before - saved < before


def test_counts_with_and_without_a_tied_head():
    model = tiny_gpt2()
    counts = parameter_counts(model)
    V, d = model.transformer.wte.weight.shape
    assert counts["params/head"] == 0 and counts["params/head_tied"] == 1
    assert counts["params/total"] == sum(p.numel() for p in model.parameters())
    assert counts["params/total_untied_head"] == counts["params/total"] + V * d
    assert counts["params/body"] == counts["params/total"] - V * d
    untied = parameter_counts(tiny_llama())
    assert untied["params/head"] == untied["params/embedding"] and untied["params/total_untied_head"] == untied["params/total"]


def test_truncated_dense_student_matches_the_kronecker_size_and_runs():
    model = tiny_llama(num_hidden_layers=6)
    kron = copy.deepcopy(model)
    compress(kron, {"layers": "odd"})
    target = parameter_counts(kron)["params/total"]
    k = layers_matching(model, int(target))
    _, blocks = decoder_blocks(model)
    per_block = sum(p.numel() for p in blocks[0].parameters())
    keep = truncate_layers(model, spread(6, k))
    assert keep == spread(6, k) and keep[0] == 0 and keep[-1] == 5
    assert abs(parameter_counts(model)["params/total"] - target) <= per_block / 2
    ids, mask = batch()
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


# --- ILKD --------------------------------------------------------------------------------------------
def recordings(model, ids, mask):
    _, blocks = decoder_blocks(model)
    with record(model, list(blocks), model.get_input_embeddings()) as rec:
        logits = model(input_ids=ids, attention_mask=mask).logits
    return rec, logits


@pytest.mark.parametrize("attention_loss", ["mse_scores", "kl_probs"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_each_ilkd_term_is_zero_for_the_teacher_itself_and_positive_otherwise(make, attention_loss, normalize):
    teacher = use_recording_attention(make())
    ids, mask = batch()
    with torch.no_grad():
        t_rec, t_logits = recordings(teacher, ids, mask)
        ref = make()  # recording attention gives the model's own output
        torch.testing.assert_close(t_logits[mask.bool()], ref(input_ids=ids, attention_mask=mask).logits[mask.bool()],
                                   atol=1e-5, rtol=1e-5)
    assert len(t_rec.hidden) == len(t_rec.attention) == 4
    weights = ILKDWeights(attention_loss=attention_loss, normalize=normalize)
    same = copy.deepcopy(teacher)
    s_rec, s_logits = recordings(same, ids, mask)
    task = torch.tensor(0.0)
    _, terms = ilkd_objective(weights, task, s_rec, t_rec, s_logits, t_logits, range(4), mask)
    assert set(terms) == {"task", "logits", "hidden", "attention", "embedding"}
    for name in ("logits", "hidden", "attention", "embedding"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name
    student = copy.deepcopy(teacher)
    compress(student, {"layers": "odd"})
    use_recording_attention(student)
    s_rec, s_logits = recordings(student, ids, mask)
    total, terms = ilkd_objective(weights, task, s_rec, t_rec, s_logits, t_logits, range(4), mask)
    for name in ("logits", "hidden", "attention", "embedding"):
        assert terms[name].item() > 1e-6, name
    total.backward()  # the objective trains the student's factors
    assert student.get_input_embeddings().A.grad.abs().sum() > 0


def test_terms_ignore_padding_and_weights_combine():
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    t2 = t.clone()
    t2[1, 2:] += 100.0  # padded positions: no effect
    assert masked_mse(s, t, mask) == pytest.approx(masked_mse(s, t2, mask).item())
    assert logit_kl(s, t, 2.0, mask) == pytest.approx(logit_kl(s, t2, 2.0, mask).item())
    # KL at temperature T, by hand
    ps, pt = (s / 2).softmax(-1), (t / 2).softmax(-1)
    by_hand = ((pt * (pt.log() - ps.log())).sum(-1)[mask.bool()]).mean() * 4
    assert logit_kl(s, t, 2.0, mask).item() == pytest.approx(by_hand.item(), rel=1e-5)
    allowed = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    scores_s, scores_t = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    scores_t2 = scores_t.masked_fill(~allowed, 1e4)  # disallowed (future) positions: no effect
    for kind in ("mse_scores", "kl_probs"):
        assert attention_term((scores_s, allowed), (scores_t, allowed), kind, mask).item() == pytest.approx(
            attention_term((scores_s, allowed), (scores_t2, allowed), kind, mask).item())
    w = ILKDWeights(task=2.0, logits=0.5, hidden=0, attention=0, embedding=0)
    total, terms = ilkd_objective(w, torch.tensor(3.0), None, None, s, t, [], mask)
    assert set(terms) == {"task"}  # no teacher recording: the task loss alone
    assert total.item() == 6.0


# --- the LM text data ------------------------------------------------------------------------------
def test_strided_windows_score_every_token_once():
    from data.lm_text import IGNORE_INDEX, windows

    ids = list(range(100, 137))
    scored = []
    for chunk, labels in windows(ids, context=10, stride=4):
        assert len(chunk) <= 10 and len(chunk) == len(labels)
        scored += [tok for tok, lab in zip(chunk[1:], labels[1:]) if lab != IGNORE_INDEX]  # position 0 has no context
        assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(chunk, labels))
    assert scored == ids[1:]


def test_pydoc_corpus_splits_are_disjoint_and_deterministic():
    from data.lm_text import pydoc_documents

    splits = {s: pydoc_documents(s) for s in ("train", "validation", "test")}
    assert all(splits.values()) and len(splits["train"]) > len(splits["test"])
    assert not set(splits["train"]) & set(splits["test"]) and pydoc_documents("test") == splits["test"]
