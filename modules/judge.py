"""Pairwise judging of two models' answers (SoFT's PandaLM evaluation), scored as (wins - losses) / total.

Every pair (instruction, answer A, answer B) is judged in both orders, (A, B) and (B, A), and each order is
one judgment, so a judge that always prefers the first (or second) position scores exactly 0: position bias
cancels. Identical answers are a tie without asking the judge.

Judges (anything with ``prefer(items) -> [+1 first better | -1 second better | 0 tie]``):

- ``LogProbJudge``: an LM prompted with both answers; its verdict is the most likely next token among the
  choice tokens ("1", "2" and optionally "Tie"), read from one forward over the prompt (no generation).
  ``PANDALM_PROMPT`` is PandaLM-7B's own input format (its output starts with 1, 2 or Tie);
  ``CHAT_PROMPT`` asks an instruction model (a stand-in judge) through its chat template.
- ``ReferenceJudge``: no model; the answer with the higher token F1 against the reference answers wins.

A small LM judge often prefers one position whatever the answers (then every verdict flips with the order and
the score is 0). ``calibrated=True`` reads one verdict per pair from the difference of the two orders' log-odds
instead, which cancels a constant position preference (``calibrated_verdicts``).

Pure torch + transformers: no Lightning, no Hydra.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from modules.metrics import normalize_answer

# PandaLM's input format (github.com/WeOpenML/PandaLM, the no-input variant); its answer starts with 1, 2 or Tie
PANDALM_PROMPT = ("Below are two responses for a given task. The task is defined by the Instruction. Evaluate the "
                  "responses and generate a reference answer for the task.\n\n### Instruction:\n{instruction}\n\n"
                  "### Response 1:\n{first}\n\n### Response 2:\n{second}\n\n### Evaluation:\n")
CHAT_PROMPT = ("Here is a question and two responses.\n\nQuestion:\n{instruction}\n\nResponse 1:\n{first}\n\n"
               "Response 2:\n{second}\n\nWhich response answers the question better? Reply with one digit: 1 or 2.")
PROMPTS = {"pandalm": (PANDALM_PROMPT, False), "chat": (CHAT_PROMPT, True)}  # name -> (template, chat template)


@dataclass(frozen=True)
class Pair:
    instruction: str
    first: str
    second: str
    references: tuple[str, ...] = ()


class JudgeError(ValueError):
    """A judge that cannot be built as configured (one line)."""


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 of ``prediction`` against the best-matching reference (normalised text)."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ref in references:
        gold = normalize_answer(ref).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


class ReferenceJudge:
    """Reference-based comparison: higher token F1 against the references wins; equal F1 is a tie."""

    name = "reference F1"

    def prefer(self, pairs: Sequence[Pair]) -> list[int]:
        out = []
        for pair in pairs:
            if not pair.references:
                raise JudgeError("the reference judge needs reference answers; this pair has none")
            a, b = token_f1(pair.first, pair.references), token_f1(pair.second, pair.references)
            out.append((a > b) - (a < b))
        return out


def continuation_token(tokenizer: Any, prompt_ids: list[int], text: str, prompt: str,
                       add_special_tokens: bool = False) -> int:
    """The first token the tokenizer gives ``text`` right after ``prompt`` (a leading "▁1" and a bare "1" differ);
    ``prompt_ids`` = the prompt tokenized with the same ``add_special_tokens``."""
    full = tokenizer(prompt + text, add_special_tokens=add_special_tokens)["input_ids"]
    if full[:len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
        return tokenizer(text, add_special_tokens=False)["input_ids"][0]
    return full[len(prompt_ids)]


class LogProbJudge:
    """An LM judge: verdict = the choice token ("1", "2", optionally "Tie") with the highest next-token
    log-probability after the judging prompt. ``margin``: a log-probability gap between "1" and "2" at or
    below it is a tie."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, prompt: str = "chat", tie: str | None = None,
                 batch_size: int = 8, max_length: int = 1024, margin: float = 0.0, name: str = ""):
        if prompt not in PROMPTS:
            raise JudgeError(f"judge prompt {prompt!r} is not an option; valid choices: {', '.join(PROMPTS)}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.chat = PROMPTS[prompt]
        self.choices = ["1", "2"] + ([tie] if tie else [])
        self.batch_size, self.max_length, self.margin = batch_size, max_length, margin
        self.name = name or type(model).__name__

    def render(self, pair: Pair) -> str:
        text = self.template.format(instruction=pair.instruction.strip(), first=pair.first.strip(),
                                    second=pair.second.strip())
        if self.chat and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    @torch.no_grad()
    def choice_logprobs(self, pairs: Sequence[Pair]) -> torch.Tensor:
        """(N, len(choices)) next-token log-probabilities of the choice tokens after each judging prompt."""
        tok = self.tokenizer
        out = []
        for start in range(0, len(pairs), self.batch_size):
            texts = [self.render(p) for p in pairs[start:start + self.batch_size]]
            special = not (self.chat and getattr(tok, "chat_template", None))  # a chat template writes its own
            full = [tok(t, add_special_tokens=special)["input_ids"] for t in texts]
            choice_ids = torch.tensor([[continuation_token(tok, seq, c, t, special) for c in self.choices]
                                       for seq, t in zip(full, texts)])
            ids = [seq[-self.max_length:] for seq in full]  # long prompts keep their end, next to the verdict
            width = max(map(len, ids))
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, seq in enumerate(ids):  # left padding: the next token follows every prompt's last one
                input_ids[i, width - len(seq):] = torch.tensor(seq)
                mask[i, width - len(seq):] = 1
            device = next(self.model.parameters()).device
            logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                logits_to_keep=1).logits[:, -1].float()
            out.append(logits.log_softmax(-1).cpu().gather(1, choice_ids))
        return torch.cat(out) if out else torch.empty(0, len(self.choices))

    def log_odds(self, pairs: Sequence[Pair]) -> list[float]:
        """log p("1") - log p("2") per pair: how much the judge favours the first response."""
        lp = self.choice_logprobs(pairs)
        return (lp[:, 0] - lp[:, 1]).tolist()

    def prefer(self, pairs: Sequence[Pair]) -> list[int]:
        lp = self.choice_logprobs(pairs)
        verdicts = []
        for row in lp.tolist():
            if len(row) > 2 and row[2] > max(row[:2]):
                verdicts.append(0)
            elif abs(row[0] - row[1]) <= self.margin:
                verdicts.append(0)
            else:
                verdicts.append(1 if row[0] > row[1] else -1)
        return verdicts


def pairwise_score(outcomes: Iterable[int]) -> dict[str, float]:
    """(wins - losses) / total over judgments (+1 win, -1 loss, 0 tie), with the counts."""
    outcomes = list(outcomes)
    wins, losses = outcomes.count(1), outcomes.count(-1)
    total = len(outcomes)
    return {"score": (wins - losses) / total if total else float("nan"), "wins": wins, "losses": losses,
            "ties": total - wins - losses, "total": total}


def calibrated_verdicts(judge: Any, forward: Sequence[Pair], swapped: Sequence[Pair], margin: float = 0.0
                        ) -> tuple[list[int], list[int]]:
    """Position-calibrated verdicts of an LM judge: A is better when the judge favours A as response 1 more than it
    favours B as response 1, i.e. log-odds(A, B) - log-odds(B, A) > margin; a constant preference for one position
    cancels inside the difference. The one verdict stands for both orders."""
    ab, ba = judge.log_odds(forward), judge.log_odds(swapped)
    verdicts = [0 if abs(x - y) <= margin else (1 if x > y else -1) for x, y in zip(ab, ba)]
    return verdicts, [-v for v in verdicts]


def judge_both_orders(judge: Any, pairs: Sequence[Pair], calibrated: bool = False
                      ) -> tuple[dict[str, float], list[tuple[int, int]]]:
    """Judge each pair as (first, second) and as (second, first); returns A's (= first's) score over all 2N
    judgments and, per pair, A's outcome in each order. Identical answers are ties, not sent to the judge.
    ``calibrated`` (an LM judge): one verdict per pair from both orders' log-odds (``calibrated_verdicts``)."""
    ask = [i for i, p in enumerate(pairs) if normalize_answer(p.first) != normalize_answer(p.second)]
    forward_pairs = [pairs[i] for i in ask]
    swapped_pairs = [Pair(p.instruction, p.second, p.first, p.references) for p in forward_pairs]
    if calibrated:
        forward, swapped = calibrated_verdicts(judge, forward_pairs, swapped_pairs, getattr(judge, "margin", 0.0))
    else:
        forward, swapped = judge.prefer(forward_pairs), judge.prefer(swapped_pairs)
    per_pair = [(0, 0)] * len(pairs)
    for i, ab, ba in zip(ask, forward, swapped):
        per_pair[i] = (ab, -ba)  # in the swapped order "first" is B: A wins when the judge prefers the second
    score = pairwise_score([o for pair in per_pair for o in pair])
    decided = [per_pair[i] for i in ask]  # position consistency: the same verdict in both orders
    score["order_agreement"] = (sum(a == b for a, b in decided) / len(decided)) if decided else float("nan")
    return score, per_pair


def judge_generations(judge: Any, ours: dict[str, list[dict]], theirs: dict[str, list[dict]],
                      calibrated: bool = False) -> dict[str, tuple[dict[str, float], list[dict]]]:
    """For every sub-model key in both runs (e.g. ``depth=6``), pair the rows by prompt (the k-th occurrence
    of a prompt with the k-th) and judge ours (first) against theirs in both orders. Rows are
    ``{"prompt", "prediction", "answers"}`` as in generations.jsonl. {cell: (score, per-pair records)}."""
    out = {}
    for cell in [c for c in ours if c in theirs]:
        seen: Counter = Counter()
        index = {}
        for row in theirs[cell]:
            index[(row["prompt"], seen[row["prompt"]])] = row
            seen[row["prompt"]] += 1
        seen.clear()
        matched = []
        for row in ours[cell]:
            other = index.get((row["prompt"], seen[row["prompt"]]))
            seen[row["prompt"]] += 1
            if other is not None:
                matched.append((row, other))
        if not matched:
            continue
        pairs = [Pair(a["prompt"], a["prediction"], b["prediction"], tuple(a.get("answers") or ()))
                 for a, b in matched]
        score, outcomes = judge_both_orders(judge, pairs, calibrated)
        records = [{"prompt": p.instruction, "ours": p.first, "theirs": p.second, "outcome_ab": ab, "outcome_ba": ba}
                   for p, (ab, ba) in zip(pairs, outcomes)]
        out[cell] = (score, records)
    return out
