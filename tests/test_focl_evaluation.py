"""FoCL evaluation: forgetfulness on a hand-made matrix, Fréchet distance values, the scoring classifier."""
import numpy as np
import pytest
import torch

from data.images import load_digits_split, split_indices
from modules.continual.evaluation import (SmallClassifier, average_accuracy, classifier_accuracy, forgetfulness,
                                          frechet_distance, frechet_from_moments, inception_fid, load_classifier,
                                          per_class_accuracy, save_classifier, task_accuracies, train_classifier)


def test_forgetfulness_on_a_hand_made_matrix():
    nan = np.nan
    acc = np.array([[0.9, nan, nan, nan],
                    [0.7, 0.8, nan, nan],
                    [0.6, 0.5, 1.0, nan],
                    [0.3, 0.6, 0.9, 0.95]])
    # drops from just after learning to the end: 0.9-0.3, 0.8-0.6, 1.0-0.9 -> mean 0.3
    assert forgetfulness(acc) == pytest.approx(0.3)
    assert forgetfulness(acc, upto=3) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)
    assert forgetfulness(acc, upto=1) == 0.0
    assert average_accuracy(acc) == pytest.approx((0.3 + 0.6 + 0.9 + 0.95) / 4)
    assert average_accuracy(acc, 1) == pytest.approx(0.75)
    improved = np.array([[0.5, nan], [0.7, 0.9]])
    assert forgetfulness(improved) == pytest.approx(-0.2)  # backward transfer shows as negative


def test_task_accuracies_average_classes_within_a_task():
    assert task_accuracies({0: 1.0, 1: 0.5, 2: 0.25}, [(0, 1), (2,), (3,)])[:2] == [0.75, 0.25]


def test_frechet_distance_zero_for_identical_sets_and_gaussian_closed_form():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 6))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(torch.tensor(feats), torch.tensor(feats)) == pytest.approx(0.0, abs=1e-8)
    # diagonal Gaussians: ‖μ1-μ2‖² + Σ (σ1_i - σ2_i)²
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()  # 5 + 1 + 1 + 4 = 11
    assert frechet_from_moments(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(closed, rel=1e-10)
    # a rotated (non-diagonal) pair: the distance does not depend on the basis
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    assert frechet_from_moments(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T) == \
        pytest.approx(closed, rel=1e-8)
    # non-commuting covariances agree with scipy's sqrtm formula
    from scipy.linalg import sqrtm

    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    c1, c2 = a @ a.T + np.eye(3), b @ b.T + np.eye(3)
    ref = np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert frechet_from_moments(np.zeros(3), c1, np.zeros(3), c2) == pytest.approx(ref, rel=1e-8)
    # samples of two Gaussians approach the closed form
    x = rng.normal(mu1, np.sqrt(s1), size=(20000, 3))
    y = rng.normal(mu2, np.sqrt(s2), size=(20000, 3))
    assert frechet_distance(x, y) == pytest.approx(closed, rel=0.05)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_split()["all"]
    x = images.float() / 127.5 - 1.0  # (N, 1, 8, 8) in [-1, 1]
    train, test = split_indices(len(labels), [0.2], seed=0)
    return (x[train], labels[train]), (x[test], labels[test])


@pytest.fixture(scope="module")
def scorer(digits):
    (xtr, ytr), _ = digits
    torch.manual_seed(0)
    return train_classifier(SmallClassifier((1, 8, 8), 10), xtr, ytr, epochs=8, seed=0)


def test_scoring_classifier_beats_90_percent_on_real_digits(digits, scorer, tmp_path):
    _, (xte, yte) = digits
    clf = scorer
    acc = classifier_accuracy(clf, xte, yte)
    assert acc > 0.9
    save_classifier(clf, tmp_path / "clf.pt")
    assert classifier_accuracy(load_classifier(tmp_path / "clf.pt"), xte, yte) == acc


def test_per_class_accuracy_of_a_generator_that_replays_real_images(digits, scorer):
    (xtr, ytr), _ = digits
    clf = scorer

    class Lookup(torch.nn.Module):  # "generates" the first training image of class c, or class 0's
        z_dim = 2

        def __init__(self, broken=()):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.broken = broken

        def forward(self, z, c):
            c = torch.where(torch.isin(c, torch.tensor(list(self.broken) or [-1])), torch.zeros_like(c), c)
            first = torch.stack([xtr[(ytr == k).nonzero()[0, 0]] for k in range(10)])
            return first[c]

    good = per_class_accuracy(Lookup(), clf, [1, 2, 3], n_per_class=5)
    assert good == {1: 1.0, 2: 1.0, 3: 1.0}
    bad = per_class_accuracy(Lookup(broken=(2,)), clf, [1, 2], n_per_class=5)
    assert bad == {1: 1.0, 2: 0.0}


def test_inception_fid_without_weights_is_one_line(tmp_path):
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(FileNotFoundError) as err:
        inception_fid(x, x, tmp_path / "pt_inception.pth")
    assert "\n" not in str(err.value) and "eval.inception_weights=" in str(err.value)
