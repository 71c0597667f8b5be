"""Nested causal-LM fine-tuning (QDyLoRA; SoFT reuses it with a depth axis).

Loss = next-token cross-entropy on answer tokens (prompt tokens carry label -100). Test and validation batches
also carry left-padded prompts: each sub-model greedily generates answers scored by exact match (validation
only in the grid evaluation after training, where ``best/*`` chooses on ``val/em``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from modules.metrics import exact_match, first_answer_line
from modules.nested_module import NestedModule
from modules.submodel import NestedModel, Sampler, SubModel

IGNORE_INDEX = -100  # label of prompt and padding tokens
GENERATIONS = "generations"  # evaluate_submodel's non-metric entry: the test generations of the batch


class NestedCausalLM(NestedModule):
    @staticmethod
    def batch_size(batch: dict[str, Any]) -> int:
        return len(batch["mc_labels"] if "mc_labels" in batch else batch["input_ids"])

    def __init__(self, model: torch.nn.Module, tokenizer: Any, nested: NestedModel, sampler: Sampler,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: dict | None = None,
                 eval_grid: Sequence[SubModel] | None = None, generate: bool = True, max_new_tokens: int = 16,
                 answer_fn: Callable[[str], str] = first_answer_line,
                 score_fn: Callable[[str, list[str]], float] = exact_match,
                 exit_heads: torch.nn.Module | None = None):
        super().__init__(model, nested, sampler, optimizer, scheduler, eval_grid)
        self.tokenizer, self.generate, self.max_new_tokens = tokenizer, generate, max_new_tokens
        self.answer_fn, self.score_fn = answer_fn, score_fn
        self.exit_heads = exit_heads  # SFT+ICT: a head per exit (modules/multi_exit.py ExitHeads), trained alone
        self.generations: dict[str, list[dict[str, Any]]] = {}  # test generations per cell (generations.jsonl)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over answer tokens (what HF's loss computes), but the LM
        head only runs where there is a label: prompts are most tokens and the head (vocab x d)
        is a large share of a small model's compute."""
        hidden = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       use_cache=False).last_hidden_state  # (B, T, C)
        labels = batch["labels"][:, 1:]  # position t predicts token t+1
        keep = labels != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
        return F.cross_entropy(logits.float(), labels[keep])

    def losses(self, batch: dict[str, torch.Tensor], subs: Sequence[SubModel]) -> list[torch.Tensor]:
        """Sub-models that differ only in ``depth`` share one pass through the blocks (SoFT: every exit is
        read from the same forward, modules/multi_exit.py); anything else runs one forward per sub-model."""
        if len(subs) < 2 or any(sub.get("depth") is None for sub in subs):
            return super().losses(batch, subs)
        from modules.multi_exit import multi_exit_loss

        groups: dict[SubModel, list[SubModel]] = {}
        for sub in subs:  # same adapter rank (or other axes), different exits
            groups.setdefault(SubModel(tuple(d for d in sub.dims if d[0] != "depth")), []).append(sub)
        per_sub: dict[SubModel, torch.Tensor] = {}
        for members in groups.values():
            self.nested.apply(members[0])  # the group's other axes; the pass below picks its own layer range
            _, per_exit = multi_exit_loss(self.model, batch, [m["depth"] for m in members], heads=self.exit_heads)
            per_sub.update({m: per_exit[m["depth"]] for m in members})
        return [per_sub[sub] for sub in subs]

    def evaluate_submodel(self, batch: dict[str, Any], split: str) -> dict[str, Any]:
        if "mc_input_ids" in batch:
            return {"mc_acc": self.choice_accuracy(batch)}
        metrics = {"loss": self.loss(batch)}
        if self.generate and "gen_input_ids" in batch and self._scores_answers(split):
            preds = self.generate_answers(batch)
            scores = [self.score_fn(p, refs) for p, refs in zip(preds, batch["answers"])]
            metrics["em"] = sum(scores) / len(preds)
            if split != "test":  # generations.jsonl holds the test answers only
                return metrics
            prompts = self.tokenizer.batch_decode(batch["gen_input_ids"], skip_special_tokens=True)
            metrics[GENERATIONS] = [{"prompt": q, "prediction": p, "answers": list(refs), "em": s}
                                    for q, p, refs, s in zip(prompts, preds, batch["answers"], scores)]
        return metrics

    def _scores_answers(self, split: str) -> bool:
        """Exact match on test, and on validation in the grid evaluation after training (``val/em`` is what
        ``best/*`` chooses on); the validation passes during fit stay loss-only (generation is slow)."""
        from lightning.pytorch.trainer.states import TrainerFn

        return split == "test" or (split == "val" and self._trainer is not None
                                   and self.trainer.state.fn == TrainerFn.VALIDATING)

    def log_cell(self, split: str, metrics, cell: SubModel, batch_size: int, **kwargs: Any) -> None:
        """Log the metrics; the generations that come with them are kept per cell instead (not a metric)."""
        rows = metrics.pop(GENERATIONS, None) if isinstance(metrics, dict) else None
        if rows:
            self.generations.setdefault(cell.key, []).extend(rows)
        super().log_cell(split, metrics, cell, batch_size, **kwargs)

    def on_test_epoch_start(self) -> None:
        self.generations = {}

    @torch.no_grad()
    def choice_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_choices) log-probabilities of each choice letter right after "Answer:"."""
        logits = self.model(input_ids=batch["mc_input_ids"], attention_mask=batch["mc_attention_mask"],
                            logits_to_keep=1).logits[:, -1]  # (B, V); left padding is masked out

        return logits.float().log_softmax(-1)[:, batch["mc_choice_ids"]]

    def choice_accuracy(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MMLU-style: the choice whose letter is most likely (the letters are single tokens after one
        shared prompt, so this is the choice log-likelihood argmax)."""
        return (self.choice_scores(batch).argmax(-1) == batch["mc_labels"]).float().mean()

    @torch.no_grad()
    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        """Greedy answers of the active sub-model for the left-padded prompts in ``batch``."""
        prompt_len = batch["gen_input_ids"].shape[1]
        out = self.model.generate(input_ids=batch["gen_input_ids"], attention_mask=batch["gen_attention_mask"],
                                  max_new_tokens=self.max_new_tokens, do_sample=False, use_cache=True,
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)
        texts = self.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
        return [self.answer_fn(t) for t in texts]

    # --- perplexity of the epoch-mean loss (exp of a mean, not a mean of exps) ------------
    def on_validation_epoch_end(self) -> None:
        self._log_perplexities("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexities("test")
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank's shard
            shards = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shards, self.generations)
            self.generations = {k: [row for shard in shards for row in shard.get(k, [])]
                                for k in dict.fromkeys(k for shard in shards for k in shard)}

    def _log_perplexities(self, split: str) -> None:
        metrics = self.trainer.callback_metrics
        for key in [k for k in metrics if k.partition("@")[0] == f"{split}/loss"]:
            cell = key.partition("@")[2]
            self.log(f"{split}/ppl" + (f"@{cell}" if cell else ""), math.exp(min(float(metrics[key]), 50.0)))
