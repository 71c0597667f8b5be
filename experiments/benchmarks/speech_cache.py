"""What the feature cache buys the speech paradigm: measured rows for docs/whisper_paradigm.md.

1. encoder passes per utterance and condition: a cache built for n clips under k conditions encodes each
   (clip, condition) exactly once; a second cache object on the same folder (a later run) encodes nothing;
2. cached probing vs recomputing: P probes (weighted + single layers) trained S steps each, features read
   from the cache (one encoder pass per clip, then none) vs every batch sent through the encoder again;
3. the short-clip path vs 30-s padding: encoder time per clip.

    python -m experiments.benchmarks.speech_cache --threads 1
    python -m experiments.benchmarks.speech_cache --model /path/to/whisper --n 64 --steps 30
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch


def _probes(num_layers: int, dim: int, classes: int, count: int):
    from modules.probe_module import SpeechProbe

    layers = ["weighted", *range(num_layers)][:count]
    return [SpeechProbe(num_layers, dim, [classes], layer=layer, hidden_dim=256) for layer in layers]


def _train(probe, batches, steps: int) -> None:
    opt = torch.optim.Adam(probe.parameters(), lr=1e-4)
    for _, batch in zip(range(steps), batches):
        loss, _ = probe.loss_and_correct(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        opt.step()


def count_passes(upstream, waves: dict, conditions: list[str], folder: Path) -> dict:
    from data.speech_tasks import parse_condition
    from modules.speech.cache import FeatureCache

    conditions = [parse_condition(c) for c in conditions]  # metric-key form (snr10_white) or snr=10,noise=white
    first = FeatureCache(folder, upstream, batch_size=16)
    for c in conditions:
        first.get("bench", waves, c)
    second = FeatureCache(folder, upstream, batch_size=16)  # a later run on the same cache folder
    for c in conditions:
        second.get("bench", waves, c)
    return {"clips": len(waves), "conditions": len(conditions), "first": dict(first.passes),
            "second": dict(second.passes)}


def cached_vs_recomputed(upstream, waves: dict, labels: torch.Tensor, probes: int, steps: int, batch_size: int,
                         folder: Path) -> dict:
    from modules.speech.cache import FeatureCache

    ids = list(waves)
    order = [ids[i:i + batch_size] for i in range(0, len(ids) - batch_size + 1, batch_size)]
    index = {u: i for i, u in enumerate(ids)}
    classes = int(labels.max()) + 1

    torch.manual_seed(0)
    start = time.perf_counter()
    cache = FeatureCache(folder, upstream, batch_size=16)
    feats = cache.get("probe-bench", waves)
    for probe in _probes(upstream.num_layers, upstream.hidden_size, classes, probes):
        def cached_batches():
            for group in itertools.cycle(order):
                rows = [index[u] for u in group]
                hidden, lengths = feats.batch(rows)
                yield {"hidden": hidden, "lengths": lengths, "labels": labels[rows]}

        _train(probe, cached_batches(), steps)
    cached_s = time.perf_counter() - start

    torch.manual_seed(0)
    start = time.perf_counter()
    for probe in _probes(upstream.num_layers, upstream.hidden_size, classes, probes):
        def fresh_batches():
            for group in itertools.cycle(order):
                hidden, lengths = upstream([waves[u] for u in group])  # the encoder on every batch
                yield {"hidden": hidden, "lengths": lengths, "labels": labels[[index[u] for u in group]]}

        _train(probe, fresh_batches(), steps)
    fresh_s = time.perf_counter() - start
    return {"probes": probes, "steps": steps, "batch_size": batch_size, "clips": len(ids),
            "encoder_passes_cached": int(sum(cache.passes.values())), "encoder_passes_recomputed": probes * steps * batch_size,
            "cached_s": cached_s, "recomputed_s": fresh_s, "speedup": fresh_s / cached_s}


def padding_cost(model: str, waves: list, repeats: int = 1) -> dict:
    from modules.speech.upstream import WhisperUpstream

    out = {}
    for pad in (False, True):
        up = WhisperUpstream(model, pad_to_30s=pad)
        up([waves[0]])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            for w in waves:
                up([w])
        out["pad30_ms" if pad else "short_ms"] = 1000 * (time.perf_counter() - start) / (repeats * len(waves))
    out["speedup"] = out["pad30_ms"] / out["short_ms"]
    out["clip_s"] = sum(len(w) for w in waves) / len(waves) / 16_000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--set", default="keywords", help="synthetic set the clips come from")
    ap.add_argument("--n", type=int, default=64, help="clips")
    ap.add_argument("--probes", type=int, default=6, help="probes (weighted + single layers)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per probe")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pad-clips", type=int, default=8, help="clips timed for the padding row")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from data.speech_synth import synthetic_speech
    from modules.speech.upstream import WhisperUpstream

    data = synthetic_speech(args.set)
    items = data.split("train")[:: max(1, len(data.split("train")) // args.n)][: args.n]
    waves = {it.id: it.audio() for it in items}
    labels = torch.tensor([it.label for it in items])
    up = WhisperUpstream(args.model, pad_to_30s=False)
    with tempfile.TemporaryDirectory() as tmp:
        passes = count_passes(up, waves, ["clean", "snr10_white", "rt60_0.6"], Path(tmp) / "passes")
        speed = cached_vs_recomputed(up, waves, labels, args.probes, args.steps, args.batch_size, Path(tmp) / "probe")
    pad = padding_cost(args.model, list(waves.values())[: args.pad_clips])
    print(f"model {args.model}, {args.set} clips, torch threads {args.threads}\n")
    print("| measurement | result |\n|---|---|")
    per = {k: v / passes["clips"] for k, v in passes["first"].items()}
    print(f"| encoder passes per clip and condition, first run ({passes['clips']} clips x {passes['conditions']} "
          f"conditions) | {', '.join(f'{c}: {v:g}' for (_, c), v in per.items())} |")
    print(f"| encoder passes, second run on the same cache | {sum(passes['second'].values())} |")
    print(f"| {speed['probes']} probes x {speed['steps']} steps x batch {speed['batch_size']}, cached "
          f"({speed['encoder_passes_cached']} encoder passes) | {speed['cached_s']:.1f} s |")
    print(f"| same, features recomputed per batch ({speed['encoder_passes_recomputed']} encoder passes) | "
          f"{speed['recomputed_s']:.1f} s (cache **{speed['speedup']:.0f}x** faster) |")
    print(f"| encoder per clip ({pad['clip_s']:.2f} s clips), short-clip path | {pad['short_ms']:.1f} ms |")
    print(f"| encoder per clip, 30-s padding | {pad['pad30_ms']:.0f} ms (short path **{pad['speedup']:.0f}x** faster) |")


if __name__ == "__main__":
    main()
