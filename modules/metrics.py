"""Evaluation metrics for the QDyLoRA tables: exact match (GSM8k, TriviaQA), MMLU multiple choice,
perplexity, and the per-rank summaries (best sub-model, area under the rank-metric curve).

Pure Python (+ numpy): no torch, Lightning or Hydra.
"""
from __future__ import annotations

import math
import re
import string
from typing import Mapping, Sequence

import numpy as np

# --- exact match ------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD / TriviaQA normalisation: lowercase, drop punctuation and articles, collapse spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised acceptable answer, else 0.0."""
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("exact_match needs at least one reference answer, got none")
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def _clean_number(token: str) -> str:
    token = token.replace(",", "").replace("$", "")
    if "." in token:  # "18.00" and "18.0" are the integer 18; keep real decimals like "2.5"
        token = token.rstrip("0").rstrip(".")
    return token


def extract_gsm8k_answer(text: str) -> str:
    """The final GSM8k answer: the number after ``####``, else the last number in the text.

    Commas, ``$`` and a zero fractional part are removed ("$1,234.00" -> "1234"). Returns ""
    when the text holds no number, so it scores 0 against any reference.
    """
    text = str(text)
    if "####" in text:
        found = _NUMBER.findall(text.split("####", 1)[1])
        if found:
            return _clean_number(found[0])
    found = _NUMBER.findall(text)
    return _clean_number(found[-1]) if found else ""


# Stops that end a generated answer: a newline (one-line answers) or an end-of-sequence marker
# that the tokenizer left in the decoded text.
STOP_STRINGS = ("\n", "</s>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<eos>")


def first_answer_line(generated: str, stops: Sequence[str] = STOP_STRINGS) -> str:
    """The generated continuation cut at the first stop string, stripped."""
    text = str(generated).lstrip()  # models often open with a space or newline before answering
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut].strip()


# --- multiple choice (MMLU) -------------------------------------------------------------------

CHOICE_LETTERS = "ABCDEFGHIJ"


def choice_loglik_accuracy(logprobs_per_choice: Sequence[Sequence[float | Sequence[float]]],
                           labels: Sequence[int],
                           lengths: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """Accuracy of picking the choice with the highest log-likelihood.

    ``logprobs_per_choice[i][j]`` scores choice j of question i: either its summed log-prob (a
    float) or its per-token log-probs (a list, summed here). Returns ``{"acc", "acc_norm"}``;
    ``acc_norm`` divides each sum by the choice's length: ``lengths[i][j]`` when given (e.g. bytes,
    as lm-eval-harness does), else its token count (1 for a plain float). Ties go to the first.
    """
    if len(logprobs_per_choice) != len(labels):
        raise ValueError(f"got {len(logprobs_per_choice)} questions but {len(labels)} labels")
    if not labels:
        raise ValueError("choice_loglik_accuracy needs at least one question")
    hits = hits_norm = 0
    for i, (scores, label) in enumerate(zip(logprobs_per_choice, labels)):
        totals = [float(np.sum(s)) for s in scores]
        lens = lengths[i] if lengths is not None else [np.size(s) for s in scores]  # float -> 1
        if len(lens) != len(totals) or any(n <= 0 for n in lens):
            raise ValueError(f"question {i}: need one positive length per choice, got {list(lens)}")
        hits += int(np.argmax(totals)) == int(label)
        hits_norm += int(np.argmax([t / n for t, n in zip(totals, lens)])) == int(label)
    return {"acc": hits / len(labels), "acc_norm": hits_norm / len(labels)}


def _mmlu_example(question: str, choices: Sequence[str]) -> str:
    lines = [question.strip()] + [f"{CHOICE_LETTERS[j]}. {c}" for j, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer:"


def _label_letter(example: Mapping) -> str:
    label = example["label"] if "label" in example else example["answer"]
    return label if isinstance(label, str) else CHOICE_LETTERS[int(label)]


def build_mmlu_prompt(question: str, choices: Sequence[str], subject: str,
                      few_shot: Sequence[Mapping] = ()) -> str:
    """The standard MMLU prompt (Hendrycks et al.): header, k solved examples, the open question.

    ``few_shot`` items are MC records ``{"question", "choices", "label"}`` (label an index or a
    letter; ``"answer"`` is accepted too). The prompt ends with "Answer:"; the continuation to
    score is " A" / " B" / ... . The subject's underscores become spaces ("high school physics").
    """
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ').strip()}.\n\n"
    shots = "".join(f"{_mmlu_example(ex['question'], ex['choices'])} {_label_letter(ex)}\n\n" for ex in few_shot)
    return header + shots + _mmlu_example(question, choices)


# --- summaries over sub-models ----------------------------------------------------------------

def area_under_curve(xs: Sequence[float], ys: Sequence[float], normalize: bool = True) -> float:
    """Trapezoid area under y(x) (e.g. metric over rank), points sorted by x.

    With ``normalize`` the area is divided by the x-range, so it reads as the curve's mean metric
    (a flat curve at 0.7 gives 0.7). A single point returns its y.
    """
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"area_under_curve needs equal, non-empty xs and ys; got {len(xs)} and {len(ys)}")
    order = np.argsort(np.asarray(xs, dtype=float), kind="stable")
    x, y = np.asarray(xs, dtype=float)[order], np.asarray(ys, dtype=float)[order]
    if len(set(x.tolist())) != len(x):
        raise ValueError(f"area_under_curve: duplicate x values in {sorted(x.tolist())}")
    if len(x) == 1:
        return float(y[0])
    area = float(np.trapezoid(y, x))
    return area / float(x[-1] - x[0]) if normalize else area


def best_submodel(results: Mapping[str, float], higher_is_better: bool = True) -> tuple[str, float]:
    """The (key, value) of the best sub-model; NaN results (failed evals) are skipped, ties go
    to the first key in order."""
    valid = [(k, float(v)) for k, v in results.items() if not math.isnan(float(v))]
    if not valid:
        raise ValueError(f"best_submodel: no finite result among {list(results)}")
    sign = 1.0 if higher_is_better else -1.0
    return max(valid, key=lambda kv: sign * kv[1])


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token); inf when it overflows."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf
