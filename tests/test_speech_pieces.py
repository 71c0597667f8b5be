"""Featurizer, heads, pooling and intent accuracy: values, not just shapes."""
import pytest
import torch

from modules.speech.featurizer import SingleLayer, WeightedLayerSum, build_featurizer
from modules.speech.heads import IntentHead, MeanPoolHead, intent_accuracy, intent_correct, masked_mean


def test_weighted_sum_with_one_hot_weights_equals_that_layer():
    hidden = torch.randn(5, 2, 7, 16)  # (L+1, B, T, C)
    f = WeightedLayerSum(5)
    with torch.no_grad():
        f.weights.copy_(torch.tensor([-1e4, -1e4, 0.0, -1e4, -1e4]))  # softmax -> one-hot on layer 2
    assert torch.allclose(f(hidden), hidden[2], atol=1e-6)
    assert torch.allclose(f.layer_weights(), torch.tensor([0.0, 0, 1, 0, 0]), atol=1e-6)


def test_weighted_sum_starts_equal_and_is_the_layer_mean():
    hidden = torch.randn(4, 3, 5, 8)
    f = WeightedLayerSum(4)
    assert torch.allclose(f.layer_weights(), torch.full((4,), 0.25))
    assert torch.allclose(f(hidden), hidden.mean(0), atol=1e-6)


def test_weighted_sum_layer_norm_normalises_each_layer():
    hidden = torch.randn(3, 2, 4, 8)
    hidden[1] *= 100  # a loud layer must not dominate after per-layer norm
    out = WeightedLayerSum(3, layer_norm=True)(hidden)
    ref = torch.nn.functional.layer_norm(hidden, (8,)).mean(0)
    assert torch.allclose(out, ref, atol=1e-5)


def test_single_layer_and_builder():
    hidden = torch.randn(5, 2, 3, 4)
    assert torch.equal(SingleLayer(5, -1)(hidden), hidden[4])
    assert torch.equal(build_featurizer(5, 0)(hidden), hidden[0])
    assert isinstance(build_featurizer(5, "weighted"), WeightedLayerSum)
    with pytest.raises(ValueError, match="out of range"):
        SingleLayer(5, 5)
    with pytest.raises(ValueError, match="'weighted' or a layer index"):
        build_featurizer(5, "top")


def test_masked_mean_ignores_padding():
    x = torch.zeros(2, 6, 3)
    x[0, :2] = torch.tensor([1.0, 2.0, 3.0])
    x[0, 2:] = 1e6  # padding garbage
    x[1, :5] = 4.0
    x[1, 5:] = -1e6
    out = masked_mean(x, torch.tensor([2, 5]))
    assert torch.allclose(out, torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]]))


def test_head_output_does_not_depend_on_padding():
    torch.manual_seed(0)
    head = MeanPoolHead(8, 12)
    x = torch.randn(1, 4, 8)
    padded = torch.cat([x, torch.randn(1, 3, 8) * 50], dim=1)
    a = head(x, torch.tensor([4]))
    b = head(padded, torch.tensor([4]))
    assert a.shape == (1, 12) and torch.allclose(a, b, atol=1e-5)


def test_intent_correct_only_when_all_three_slots_are():
    targets = torch.tensor([[0, 1, 2], [1, 0, 0], [2, 2, 1]])

    def onehot(idx, n):
        return torch.nn.functional.one_hot(torch.tensor(idx), n).float()

    logits = [onehot([0, 1, 2], 3), onehot([1, 0, 2], 3), onehot([2, 0, 0], 3)]  # slot-wise predictions
    # utt0: (0,1,2) all right; utt1: (1,0,0) right; utt2: (2,2,0) location wrong
    assert intent_correct(logits, targets).tolist() == [True, True, False]
    assert intent_accuracy(logits, targets) == pytest.approx(2 / 3)


def test_intent_head_shapes_and_loss():
    head = IntentHead(16, [4, 5, 3])
    logits = head(torch.randn(2, 7, 16), torch.tensor([7, 3]))
    assert [lg.shape for lg in logits] == [(2, 4), (2, 5), (2, 3)]
    loss = IntentHead.loss(logits, torch.tensor([[0, 1, 2], [3, 4, 0]]))
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="need 3 class counts"):
        IntentHead(16, [4, 5])
