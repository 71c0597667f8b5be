"""Quick check of the Whisper-probe pipeline (not a test): synthetic speech -> frozen encoder ->
feature cache -> per-layer linear probe on mean-pooled features; optionally corrupted test sets and a
30-s-padding vs short-clip comparison (speed, per-layer cosine).

    python experiments/scripts/speech_quick_probe.py --set keywords
    python experiments/scripts/speech_quick_probe.py --set keywords --test-conditions snr=10,noise=white rt60=0.6
    python experiments/scripts/speech_quick_probe.py --compare-padding 40
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data.speech_synth import SETS, speech_cache_root, synthetic_speech  # noqa: E402
from modules.speech.cache import FeatureCache  # noqa: E402
from modules.speech.corruption import Condition, Corruptor  # noqa: E402
from modules.speech.upstream import WhisperUpstream  # noqa: E402


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(x_train, y_train)
    return float((clf.predict(x_test) == y_test).mean())


def compare_padding(model: str, n: int) -> None:
    data = synthetic_speech("keywords")
    waves = [it.wave for it in data.split("test")[:n]]
    runs = {}
    for pad in (True, False):
        up = WhisperUpstream(model, pad_to_30s=pad)
        up([waves[0]])  # warm-up
        t0 = time.perf_counter()
        runs[pad] = [up([w]) for w in waves]
        runs[pad + 2] = (time.perf_counter() - t0) / len(waves)
    print(f"per clip: pad_to_30s {runs[3] * 1e3:.0f} ms, short-clip {runs[2] * 1e3:.1f} ms, speed-up {runs[3] / runs[2]:.0f}x")
    cos = []
    for (h30, l30), (hs, ls) in zip(runs[True], runs[False]):
        t = int(ls[0])
        cos.append(torch.nn.functional.cosine_similarity(h30[:, 0, :t], hs[:, 0, :t], dim=-1).mean(-1))  # (L+1,)
    cos = torch.stack(cos).mean(0)
    print("frame cosine (30-s pad vs short clip) per hidden state:", " ".join(f"{c:.3f}" for c in cos.tolist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="keywords", choices=SETS[:3])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--pad-to-30s", action="store_true", help="faithful 3000-frame input (slow on CPU)")
    ap.add_argument("--test-conditions", nargs="*", default=[], help="e.g. snr=10,noise=white rt60=0.6")
    ap.add_argument("--compare-padding", type=int, default=0, metavar="N", help="time + cosine on N clips, then exit")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare_padding:
        return compare_padding(args.model, args.compare_padding)

    data = synthetic_speech(args.set)
    up = WhisperUpstream(args.model, pad_to_30s=args.pad_to_30s)
    train_waves = data.waves("train")
    cache = FeatureCache(speech_cache_root() / "features", up,
                         Corruptor(seed=0, babble_pool=train_waves), batch_size=16)
    t0 = time.perf_counter()
    train = cache.get(f"{args.set}-train", train_waves).pooled().numpy()  # (N, L+1, C)
    tests = {c: cache.get(f"{args.set}-test", data.waves("test"), c).pooled().numpy()
             for c in ["clean", *args.test_conditions]}
    print(f"features: {time.perf_counter() - t0:.1f} s, encoder passes {dict(cache.passes)}")
    y_train, y_test = data.labels("train").numpy(), data.labels("test").numpy()
    print(f"{args.set}: {len(y_train)} train / {len(y_test)} test clips, {len(data.classes['label'])} classes, "
          f"pad_to_30s={args.pad_to_30s}")
    for cond, feats in tests.items():
        accs = [probe_accuracy(train[:, l], y_train, feats[:, l], y_test) for l in range(train.shape[1])]
        print(f"test/acc@condition={Condition.parse(cond).key} per layer (0 = embeddings):",
              " ".join(f"{a:.3f}" for a in accs))


if __name__ == "__main__":
    main()
