"""Regression: a 4-bit base must give adapters their true gradient after any evaluation.

bitsandbytes 0.50.2's CPU ``Linear4bit`` (on CPUs with AVX512-BF16) repacks its weight for an inference
kernel without autograd the first time it runs in eval mode on an input that needs no gradient, as every
Lightning validation does; afterwards the gradient w.r.t. its input is None, so adapters upstream of it
train on wrong gradients. The model builders in ``modules/hf_model.py`` switch that path off.
"""
import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from data.instruct import InstructionDataModule
from modules.adapters import attach_adapter
from modules.hf_model import load_causal_lm
from modules.lm_module import NestedCausalLM
from modules.submodel import FixedSampler
from tests.conftest import LORA_TARGETS

TINY = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def _nf4_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def _dequantized_copy(model: nn.Module) -> nn.Module:
    """The same network with every Linear4bit replaced by an nn.Linear holding its dequantized weight."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    ref = copy.deepcopy(model)
    for name, module in list(ref.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            dense.weight = nn.Parameter(bf.dequantize_4bit(module.weight.data, module.weight.quant_state).float(),
                                        requires_grad=False)
            if module.bias is not None:
                dense.bias = nn.Parameter(module.bias.data.float(), requires_grad=False)
            ref.set_submodule(name, dense)
    return ref


def _adapter_grads(module: NestedCausalLM, batch) -> dict[str, torch.Tensor]:
    module.model.train()
    module.model.zero_grad(set_to_none=True)
    module.loss(batch).backward()
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}


def test_adapter_gradients_after_validation_match_a_dequantized_reference(qa_file, tmp_path):
    model, tok = load_causal_lm("random:llama", "float32", _nf4_config(), random_config=TINY)
    nested = attach_adapter(model, "nested_lora", r_max=4, r_min=1, alpha=8, target_modules=LORA_TARGETS)
    for _, p in model.named_parameters():  # non-zero B so every adapter's gradient depends on the layers above
        if p.requires_grad and p.dim() == 2 and torch.all(p == 0):
            nn.init.normal_(p, std=0.02)
    reference_model = _dequantized_copy(model)  # before anything has run in eval mode
    make = lambda m: NestedCausalLM(m, tok, nested, FixedSampler(nested.space), generate=False,  # noqa: E731
                                    optimizer=lambda ps: torch.optim.SGD(ps, lr=0.0))  # lr 0: weights stay put
    module = make(model)
    data = InstructionDataModule(source=str(qa_file), tokenizer=tok, batch_size=4, limit_val=4, limit_test=4)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)  # validation ran inside the fit, between training steps
    assert trainer.num_val_batches and trainer.global_step == 4
    data.setup()
    batch = data.collate(data.records["train"][:4])
    got = _adapter_grads(module, batch)
    want = _adapter_grads(make(reference_model), batch)
    assert got.keys() == want.keys() and len(got) == 2 * 2 * len(LORA_TARGETS)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)


def test_eval_and_train_forward_compute_the_same_function():
    import bitsandbytes as bnb

    model, _ = load_causal_lm("random:llama", "float32", _nf4_config(), random_config=TINY)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    ids = torch.randint(0, 260, (2, 12))
    with torch.no_grad():
        model.eval()
        eval_logits = model(ids).logits
        model.train()
        train_logits = model(ids).logits
    torch.testing.assert_close(eval_logits, train_logits)
