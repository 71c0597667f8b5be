"""Quick offline check of the FoCL pieces: 5 tasks x 2 classes of scikit-learn digits (8x8).

For each regulariser (none / pixel / feature / combined, optionally ewc) trains a conditional
WGAN-GP + AC-GAN task after task and prints: the average accuracy of generated samples of all 10
classes after the last task (scored by a classifier trained on real digits), forgetfulness
(mean over tasks j < T of A[j, j] - A[T-1, j]) and the Fréchet distance in that classifier's feature
space. Not a test; about 6 minutes for the five methods on one CPU thread.

    python experiments/scripts/focl_quick_check.py --steps 300
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.images import load_digits_split, split_indices  # noqa: E402
from modules.continual.evaluation import (SmallClassifier, average_accuracy, classifier_accuracy,  # noqa: E402
                                          classifier_frechet, forgetfulness, new_accuracy_matrix,
                                          per_class_accuracy, task_accuracies, train_classifier)
from modules.continual.gan import build_gan  # noqa: E402
from modules.continual.regularizers import (ReplaySampler, estimate_fisher, make_feature_extractor,  # noqa: E402
                                            make_regularizer)
from modules.continual.tasks import TaskBatches, TaskStream  # noqa: E402
from modules.continual.trainer import ContinualGANTrainer, freeze, make_optimizers  # noqa: E402


def load_digits_pm1(seed: int):
    images, labels = load_digits_split()["all"]
    x = images.float() / 127.5 - 1.0  # (N, 1, 8, 8) in [-1, 1]
    train_idx, test_idx = split_indices(len(labels), [0.2], seed)
    return (x[train_idx], labels[train_idx]), (x[test_idx], labels[test_idx])


def run_method(name, args, stream, train, test, scorer, phi_classifier):
    torch.manual_seed(args.seed)
    G, D = build_gan((1, 8, 8), stream.num_classes)
    opt_g, opt_d = make_optimizers(G, D, args.lr, args.lr)
    trainer = ContinualGANTrainer(G, D, opt_g, opt_d, n_critic=args.n_critic, gp_weight=10.0, seed=args.seed)
    acc = new_accuracy_matrix(len(stream))
    G_old = None
    for t, classes in enumerate(stream.tasks):
        old = stream.old_classes(t)
        trainer.begin_task(t, old if G_old is not None else (), args.batch_size)
        reg = None
        if G_old is not None and name != "none":
            phi = None
            if name in ("feature", "combined"):
                phi = make_feature_extractor(args.phi, critic=D, classifier=phi_classifier, image_shape=(1, 8, 8))
            fisher = None
            if name == "ewc":
                fisher = estimate_fisher(G_old, ReplaySampler(old, G.z_dim, args.batch_size, seed=args.seed + t))
            w = {"pixel": args.pixel_weight, "feature": args.feature_weight, "ewc": args.ewc_weight}.get(name, 1.0)
            reg = make_regularizer(name, weight=w, pixel_weight=args.pixel_weight,
                                   feature_weight=args.feature_weight, phi=phi, fisher=fisher)
        batches = TaskBatches(*train, classes, args.batch_size, seed=args.seed + 100 * t)
        trainer.train_task(batches, classes, args.steps, G_old, reg)
        per_class = per_class_accuracy(G, scorer, stream.seen_classes(t), args.n_eval, seed=args.seed)
        acc[t, : t + 1] = task_accuracies(per_class, stream.tasks[: t + 1])
        G_old = freeze(copy.deepcopy(G))
    fd = classifier_frechet(G, scorer, *test, classes=range(stream.num_classes), n_per_class=args.n_eval,
                            seed=args.seed + 1)
    return acc, average_accuracy(acc), forgetfulness(acc), fd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="generator steps per task")
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of G and D (betas 0, 0.9)")
    p.add_argument("--methods", default="none,pixel,feature,combined")
    p.add_argument("--phi", default="classifier", choices=["classifier", "critic", "random"])
    p.add_argument("--pixel-weight", type=float, default=1.0)
    p.add_argument("--feature-weight", type=float, default=1.0)
    p.add_argument("--ewc-weight", type=float, default=100.0)
    p.add_argument("--n-eval", type=int, default=100, help="generated samples per class for scoring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    train, test = load_digits_pm1(args.seed)
    stream = TaskStream.from_config([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], 10, labels=train[1])
    torch.manual_seed(args.seed)
    scorer = train_classifier(SmallClassifier((1, 8, 8), 10), *train, epochs=20, seed=args.seed)
    # φ = a second classifier (other seed, narrower): the regulariser never sees the scorer itself
    torch.manual_seed(args.seed + 1)
    phi_classifier = train_classifier(SmallClassifier((1, 8, 8), 10, width=16, feature_dim=64), *train,
                                      epochs=20, seed=args.seed + 1)
    print(f"scoring classifier: test accuracy {classifier_accuracy(scorer, *test):.3f}; "
          f"φ classifier: {classifier_accuracy(phi_classifier, *test):.3f}")
    rows = []
    for name in args.methods.split(","):
        t1 = time.time()
        acc, avg, forg, fd = run_method(name, args, stream, train, test, scorer, phi_classifier)
        rows.append((name, avg, forg, fd, time.time() - t1))
        print(f"\n{name}: accuracy matrix (row = after task t, column = task j)")
        print("\n".join("  ".join("  -  " if np.isnan(v) else f"{v:.2f} " for v in row) for row in acc))
    print(f"\n| method | avg acc (10 classes, after task 5) | forgetfulness | Fréchet distance | time (s) |")
    print("|---|---|---|---|---|")
    for name, avg, forg, fd, sec in rows:
        label = f"{name} (φ={args.phi})" if name in ("feature", "combined") else name
        print(f"| {label} | {avg:.3f} | {forg:.3f} | {fd:.2f} | {sec:.0f} |")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
