"""Lightning glue for nested causal-LM fine-tuning (QDyLoRA; SoFT reuses it with a depth axis).

Training: at each optimizer step the sampler picks sub-models (e.g. one adapter rank); every
micro-batch of that step trains on them. Evaluation: every sub-model of the grid is scored from
the same weights, logged as ``<split>/<metric>@<sub-model>``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch

from modules.submodel import NestedModel, Sampler, SubModel, metric_key


class NestedCausalLM(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, nested: NestedModel, sampler: Sampler,
                 optimizer: Callable[..., torch.optim.Optimizer], scheduler: dict | None = None,
                 eval_grid: Sequence[SubModel] | None = None, generate: bool = True,
                 max_new_tokens: int = 16, answer_fn: Callable[[str], str] | None = None,
                 score_fn: Callable[[str, list[str]], float] | None = None):
        super().__init__()
        self.model, self.tokenizer, self.nested, self.sampler = model, tokenizer, nested, sampler
        self.optimizer_factory, self.scheduler_cfg = optimizer, scheduler or {}
        self.eval_grid = list(eval_grid) if eval_grid is not None else nested.space.grid()
        self.generate, self.max_new_tokens = generate, max_new_tokens
        self.answer_fn = answer_fn or _first_line
        self.score_fn = score_fn or _exact_match
        self.strict_loading = False  # checkpoints hold only the trainable weights
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found

    # --- training -------------------------------------------------------------------------
    def forward_loss(self, batch: dict[str, torch.Tensor], sub: SubModel) -> torch.Tensor:
        self.nested.apply(sub)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"])
        return out.loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # global_step counts optimizer steps, so all micro-batches of an accumulation step share it.
        subs = self.sampler.submodels(self.global_step)
        losses = [self.forward_loss(batch, sub) for sub in subs]
        loss = torch.stack(losses).mean()
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if len(subs) > 1:
            for sub, sub_loss in zip(subs, losses):
                self.log(metric_key("train/loss", sub), sub_loss, batch_size=bs)
        elif subs[0].dims:
            for axis, value in subs[0].dims:
                self.log(f"train/{axis}", float(value), batch_size=bs)
        return loss

    # --- evaluation over the grid --------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", generate=False)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test", generate=self.generate)

    def on_test_epoch_end(self) -> None:
        self._log_perplexities("test")

    def on_validation_epoch_end(self) -> None:
        self._log_perplexities("val")

    def _evaluate(self, batch: dict[str, Any], split: str, generate: bool) -> None:
        bs = batch["input_ids"].shape[0]
        for sub in self.eval_grid:
            self.log(metric_key(f"{split}/loss", sub), self.forward_loss(batch, sub), batch_size=bs)
            if generate and "gen_input_ids" in batch:
                preds = self.generate_answers(batch, sub)
                scores = [self.score_fn(p, refs) for p, refs in zip(preds, batch["answers"])]
                self.log(metric_key(f"{split}/em", sub), sum(scores) / len(scores), batch_size=bs)
        self.nested.apply(self.nested.space.largest)

    def _log_perplexities(self, split: str) -> None:
        # Perplexity of the epoch-mean loss (exp of a mean, not a mean of exps).
        metrics = self.trainer.callback_metrics
        for sub in self.eval_grid:
            loss = metrics.get(metric_key(f"{split}/loss", sub))
            if loss is not None:
                self.log(metric_key(f"{split}/ppl", sub), math.exp(min(float(loss), 50.0)))

    @torch.no_grad()
    def generate_answers(self, batch: dict[str, Any], sub: SubModel) -> list[str]:
        """Greedy answers for the left-padded prompts in ``batch`` with ``sub`` active."""
        self.nested.apply(sub)
        prompt_len = batch["gen_input_ids"].shape[1]
        out = self.model.generate(input_ids=batch["gen_input_ids"], attention_mask=batch["gen_attention_mask"],
                                  max_new_tokens=self.max_new_tokens, do_sample=False, use_cache=True,
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)
        texts = self.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
        return [self.answer_fn(t) for t in texts]

    # --- optimisation and checkpoints ---------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        name = self.scheduler_cfg.get("name")
        if not name:
            return optimizer
        from transformers import get_scheduler

        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(round(self.scheduler_cfg.get("warmup_ratio", 0.0) * total))
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Keep only trainable weights: the (possibly 4-bit) base is rebuilt from its name.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def _exact_match(prediction: str, answers: list[str]) -> float:
    return float(any(prediction.strip() == a.strip() for a in answers))
