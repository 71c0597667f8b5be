"""SoFT dynamic-depth decoding vs full-depth greedy, on the same prompts (docs/soft.md).

Methods (greedy, batch 1, KV cache on):
    full greedy               HF ``generate`` at full depth: the baseline and the quality reference
    hf assistant_early_exit   transformers' self-speculative decoding, draft = first ``--exit-layer`` layers,
                              ``--num-draft`` tokens per round ("hf defaults": transformers' own draft-length
                              schedule and confidence stop)
    ours self-speculative     ours: one shared KV cache, verification runs only the layers above the draft
    confidence early exit     per-token exit at the first confident exit (``--exits``/``--thresholds``),
                              KV back-fill
    early-exit loop, no exit  the same loop with every threshold at 1 (no head is run at the exits): the
                              loop's own overhead against HF generate

Reported per method: ms/token (wall time over all prompts / tokens produced) and its speed-up over full
greedy; the same from process CPU time (with ``--threads 1`` on a CPU, what decoding costs, barely moved by
other processes' load); token agreement with full greedy (identical tokens at the same positions /
reference tokens); exact match (fraction of prompts whose whole output is identical); drafted tokens and
draft acceptance rate; mean exit layer. Each prompt runs every method once, in a fresh seeded order per
prompt, so machine-load drift hits all alike; one warm-up call per method comes first.

    python -m experiments.benchmarks.soft_decoding --model smollm2-135m-instruct --exit-layer 12 \
        --exits 6 12 18 24 --thresholds 0.95 0.95 0.9 0.9 --max-new-tokens 32 --num-prompts 6

A trained run instead of a pretrained model: ``--run <run folder>`` loads the run's model (its
``.hydra/config.yaml``) with the weights of its ``checkpoints/last.ckpt``; with ``--prompts run`` the prompts are
the run's own test prompts (from its ``generations.jsonl``) and each method's answers are also scored by exact
match against the references ("answer EM").
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from modules.early_exit import (PAPER_THRESHOLDS, DecodeResult, confidence_early_exit, greedy_generate,
                                hf_self_speculative, self_speculative_generate)
from modules.multi_exit import DecoderDepth, MultiExitError

PROMPTS = [
    "Give three tips for staying healthy.",
    "What is the capital of France?",
    "Explain what a hash table is in one paragraph.",
    "Write a short poem about the sea.",
    "List the planets of the solar system in order from the sun.",
    "How do I make a cup of tea?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
]


def encode(tokenizer, text: str, chat_template: bool) -> torch.Tensor:
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    return ids  # (1, P)


def load_run(run_dir: Path, dtype: str | None = None):
    """(model, tokenizer) of a finished LM run: its model config, then the trained weights of last.ckpt
    (a full fine-tuning run's checkpoint holds every weight of the model)."""
    from omegaconf import OmegaConf

    from experiments.core.config import get
    from experiments.core.runtime import checkpoint_of, read_checkpoint
    from modules.hf_model import load_causal_lm

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    if get(cfg, "adapter.kind") not in (None, "none") or get(cfg, "depth.exit_heads"):
        raise SystemExit(f"error: --run {run_dir}: only full fine-tuning runs (adapter=none, no exit heads) "
                         "are benchmarked")
    random_config = OmegaConf.to_container(cfg.model.random_config) if cfg.model.get("random_config") else None
    model, tokenizer = load_causal_lm(str(cfg.model.name_or_path), dtype or str(cfg.model.dtype),
                                      random_config=random_config)
    state = read_checkpoint(checkpoint_of(run_dir, "--run"), "--run")["state_dict"]
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or not weights:
        raise SystemExit(f"error: --run {run_dir}: its checkpoint does not match {cfg.model.name_or_path} "
                         f"({len(unexpected)} unexpected weights)")
    return model, tokenizer


def run_prompts(run_dir: Path, limit: int) -> list[tuple[str, list[str]]]:
    """The run's test prompts and reference answers, from generations.jsonl (its first sub-model's rows)."""
    import json

    rows, first = [], None
    for line in (run_dir / "generations.jsonl").read_text().splitlines():
        row = json.loads(line)
        first = first or row["submodel"]
        if row["submodel"] == first and len(rows) < limit:
            rows.append((row["prompt"], row["answers"]))
    return rows


def agreement(out: list[int], ref: list[int]) -> int:
    return sum(a == b for a, b in zip(out, ref))


def run_benchmark(model, prompts: Sequence[torch.Tensor], exit_layer: int, exits: Sequence[int],
                  thresholds: Sequence[float], max_new_tokens: int, num_draft: int = 4,
                  eos_token_id: int | None = None, seed: int = 0,
                  answer_em: Callable[[int, list[int]], float] | None = None) -> list[dict]:
    """One row per method (see the module docstring); ``answer_em(prompt index, tokens)`` scores an output
    against that prompt's references (the "answer EM" column)."""
    kw = dict(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
    methods: dict[str, Callable[[torch.Tensor], DecodeResult]] = {
        "full greedy": lambda ids: greedy_generate(model, ids, **kw),
        "hf assistant_early_exit": lambda ids: hf_self_speculative(model, ids, exit_layer, num_draft=num_draft, **kw),
        "hf assistant_early_exit, hf defaults": lambda ids: hf_self_speculative(model, ids, exit_layer, **kw),
        "ours self-speculative": lambda ids: self_speculative_generate(model, ids, exit_layer, num_draft=num_draft,
                                                                       **kw),
        "confidence early exit": lambda ids: confidence_early_exit(model, ids, exits, thresholds, **kw),
        "early-exit loop, no exit": lambda ids: confidence_early_exit(model, ids, exits, [1.0] * len(exits), **kw),
    }
    notes: dict[str, str] = {}
    for name, fn in list(methods.items()):  # warm-up; drop a method the model cannot run
        try:
            fn(prompts[0][:, :8])
        except MultiExitError as err:
            notes[name] = str(err)
            del methods[name]
    rng = random.Random(seed)
    results: dict[str, list[tuple[float, float, DecodeResult]]] = {name: [] for name in methods}
    for ids in prompts:
        order = list(methods)
        rng.shuffle(order)
        for name in order:
            wall, cpu = time.perf_counter(), time.process_time()
            res = methods[name](ids)
            results[name].append((time.perf_counter() - wall, time.process_time() - cpu, res))

    refs = [r.tokens for *_, r in results["full greedy"]]
    base_ms = base_cpu = None
    rows = []
    for name, runs in results.items():
        outs = [r.tokens for *_, r in runs]
        tokens = sum(map(len, outs))
        ms = 1000 * sum(t for t, _, _ in runs) / max(tokens, 1)
        cpu_ms = 1000 * sum(c for _, c, _ in runs) / max(tokens, 1)
        base_ms, base_cpu = base_ms or ms, base_cpu or cpu_ms
        stats = [r.stats for *_, r in runs]
        row = {"method": name, "ms_per_token": ms, "speedup": base_ms / ms, "cpu_ms_per_token": cpu_ms,
               "cpu_speedup": base_cpu / cpu_ms, "tokens": tokens,
               "token_agreement": sum(agreement(o, ref) for o, ref in zip(outs, refs)) / max(sum(map(len, refs)), 1),
               "exact_match": sum(o == ref for o, ref in zip(outs, refs)) / len(refs)}
        if answer_em is not None:
            row["answer_em"] = sum(answer_em(i, o) for i, o in enumerate(outs)) / len(outs)
        if "drafted" in stats[0]:
            drafted = sum(s["drafted"] for s in stats)
            row["drafted"] = drafted
            row["acceptance_rate"] = sum(s["accepted"] for s in stats) / drafted if drafted else float("nan")
        if "exit_counts" in stats[0]:
            counts = {e: sum(s["exit_counts"][e] for s in stats) for e in stats[0]["exit_counts"]}
            row["exit_counts"] = counts
            row["mean_exit_layer"] = sum(e * c for e, c in counts.items()) / max(sum(counts.values()), 1)
        rows.append(row)
    rows += [{"method": name, "note": note} for name, note in notes.items()]
    return rows


def to_markdown(rows: list[dict]) -> str:
    em = any("answer_em" in r for r in rows)
    head = ("| method | ms/token | speed-up | CPU ms/token | CPU speed-up | tokens | token agreement | exact match "
            "| drafted | draft acceptance | mean exit layer |" + (" answer EM |" if em else ""))
    lines = [head, "|" + "---|" * (11 + em)]
    fmt = lambda row, key, spec: format(row[key], spec) if key in row else "–"  # noqa: E731
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['method']} | not run: {r['note']} |" + "  |" * (9 + em))
            continue
        lines.append(f"| {r['method']} | {r['ms_per_token']:.1f} | {r['speedup']:.2f}x | {r['cpu_ms_per_token']:.1f} | "
                     f"{r['cpu_speedup']:.2f}x | {r['tokens']} | {r['token_agreement']:.3f} | {r['exact_match']:.2f} | "
                     f"{fmt(r, 'drafted', 'd')} | {fmt(r, 'acceptance_rate', '.2f')} | {fmt(r, 'mean_exit_layer', '.1f')} |"
                     + (f" {fmt(r, 'answer_em', '.3f')} |" if em else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="SoFT dynamic-depth decoding vs full-depth greedy")
    p.add_argument("--model", default=None, help="offline alias, local folder, HF id, or random:<arch>")
    p.add_argument("--run", default=None, help="a finished full fine-tuning LM run folder (e.g. experiment=soft/quick): "
                                              "its model with its trained weights, instead of --model")
    p.add_argument("--prompts", choices=["builtin", "run"], default="builtin",
                   help="builtin: the chat prompts below; run: the --run's test prompts (with answer EM)")
    p.add_argument("--random-config", default=None, help="JSON config kwargs for a random:<arch> model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--exit-layer", type=int, default=None, help="draft depth of self-speculative decoding "
                                                                 "(default: half the layers)")
    p.add_argument("--num-draft", type=int, default=4, help="tokens drafted per verification (both decoders)")
    p.add_argument("--exits", type=int, nargs="+", default=None, help="early-exit layers, increasing, below "
                                                                       "the depth (default: every quarter)")
    p.add_argument("--thresholds", type=float, nargs="+", default=None,
                   help="one per exit; >= 1 never exits (default: the paper's first ones, 0.95 0.95 0.9 ...)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--num-prompts", type=int, default=len(PROMPTS))
    p.add_argument("--no-chat-template", action="store_true", help="encode the prompts as plain text")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the rows and settings as JSON here")
    args = p.parse_args(argv)
    if (args.model is None) == (args.run is None):
        p.error("give exactly one of --model and --run")
    if args.prompts == "run" and not (args.run and (Path(args.run) / "generations.jsonl").is_file()):
        p.error("--prompts run needs --run <folder> holding generations.jsonl")

    from modules.hf_model import load_causal_lm
    from modules.metrics import exact_match, first_answer_line

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        model, tokenizer = load_run(Path(args.run), args.dtype)
    else:
        model, tokenizer = load_causal_lm(args.model, dtype=args.dtype,
                                          random_config=json.loads(args.random_config) if args.random_config else None)
    model.to(args.device).eval()
    n = DecoderDepth(model).num_layers
    exit_layer = args.exit_layer or n // 2
    exits = args.exits or sorted({max(1, n * q // 4) for q in (1, 2, 3)})
    thresholds = args.thresholds or list(PAPER_THRESHOLDS.values())[:len(exits)]
    answer_em = None
    if args.prompts == "run":  # the run's own prompt format (no chat template), scored against the references
        qa = run_prompts(Path(args.run), args.num_prompts)
        prompts = [encode(tokenizer, q, False).to(args.device) for q, _ in qa]
        answer_em = lambda i, tokens: exact_match(  # noqa: E731
            first_answer_line(tokenizer.decode(tokens, skip_special_tokens=True)), qa[i][1])
    else:
        prompts = [encode(tokenizer, t, not args.no_chat_template).to(args.device)
                   for t in PROMPTS[:args.num_prompts]]
    rows = run_benchmark(model, prompts, exit_layer, exits, thresholds, args.max_new_tokens, args.num_draft,
                         tokenizer.eos_token_id, args.seed, answer_em)
    settings = {"model": args.model or args.run, "prompts_from": args.prompts, "layers": n, "exit_layer": exit_layer, "num_draft": args.num_draft,
                "exits": exits, "thresholds": thresholds, "max_new_tokens": args.max_new_tokens,
                "prompts": len(prompts), "dtype": args.dtype, "device": args.device,
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(settings))
    print(to_markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
