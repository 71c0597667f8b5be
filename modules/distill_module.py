"""KnGPT2's Lightning modules: a compressed student trained with ILKD from its frozen dense teacher.

``DistillCausalLM`` (on ``NestedCausalLM``: the same next-token loss, perplexity and grid evaluation) trains
with ``ilkd_objective`` (modules/ilkd.py): the task loss plus the weighted distillation terms, each logged as
``train/<term>`` (``train/loss`` is the weighted total). The teacher is attached with ``add_reference`` (frozen,
eval mode, out of checkpoints) and only when a distillation weight is positive. Evaluation scores the student
alone; each batch is weighted by its scored tokens, so ``val/ppl`` / ``test/ppl`` are exp(total NLL / tokens)
over the split. ``DistillSequenceClassifier`` is the same on ``NestedSequenceClassifier`` (GLUE).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.classifier_module import NestedSequenceClassifier
from modules.compression import decoder_blocks
from modules.ilkd import ILKDWeights, ilkd_objective, record, use_recording_attention
from modules.lm_module import IGNORE_INDEX, NestedCausalLM
from modules.submodel import SubModel


class ILKDMixin:
    """The distillation step shared by the LM and the classifier module."""

    def setup_ilkd(self, teacher: nn.Module | None, weights: ILKDWeights, layer_map: Sequence[int] | None) -> None:
        self.ilkd = weights
        n_student = len(decoder_blocks(self.model)[1])
        self.layer_map = list(layer_map) if layer_map is not None else list(range(n_student))
        if teacher is not None and weights.needs_teacher:
            self.add_reference("teacher", teacher)
            if weights.attention > 0:  # scores are only visible through the recording attention
                use_recording_attention(self.model)
                use_recording_attention(teacher)
        else:
            self.teacher = None

    def _forward_recorded(self, model: nn.Module, inputs: dict) -> tuple[Any, Any]:
        blocks = list(decoder_blocks(model)[1])
        with record(model, blocks, model.get_input_embeddings()) as rec:
            out = model(**inputs)
        return out, rec

    def losses(self, batch: dict, subs: Sequence[SubModel]) -> list[torch.Tensor]:
        """Training: the ILKD objective of the (single) trained sub-model; every term logged on its own."""
        self.nested.apply(subs[0])
        inputs = self.model_inputs(batch)
        out, rec = self._forward_recorded(self.model, inputs)
        task = self.task_loss(out.logits, batch)
        teacher_rec = teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out, teacher_rec = self._forward_recorded(self.teacher, inputs)
            teacher_logits = t_out.logits
        total, terms = ilkd_objective(self.ilkd, task, rec, teacher_rec, out.logits, teacher_logits,
                                      self.layer_map, self.token_mask(batch))
        bs = self.batch_size(batch)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        return [total]


class DistillCausalLM(ILKDMixin, NestedCausalLM):
    def __init__(self, *args: Any, teacher: nn.Module | None = None, ilkd: ILKDWeights | None = None,
                 layer_map: Sequence[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.setup_ilkd(teacher, ilkd or ILKDWeights(), layer_map)

    @staticmethod
    def batch_size(batch: dict) -> int:
        """Scored tokens: Lightning's epoch mean of the batch losses is then the token-level mean NLL."""
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}

    @staticmethod
    def token_mask(batch: dict) -> torch.Tensor:
        return batch["attention_mask"]

    @staticmethod
    def task_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX)


class DistillSequenceClassifier(ILKDMixin, NestedSequenceClassifier):
    """GLUE: task loss = cross-entropy (MSE for STS-B); the logit term distils the teacher's class scores."""

    def __init__(self, *args: Any, teacher: nn.Module | None = None, ilkd: ILKDWeights | None = None,
                 layer_map: Sequence[int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.setup_ilkd(teacher, ilkd or ILKDWeights(), layer_map)

    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k != "labels"}

    @staticmethod
    def token_mask(batch: dict) -> torch.Tensor | None:
        return batch.get("attention_mask")

    def task_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.loss_of(logits, batch["labels"])
