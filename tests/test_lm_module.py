"""The Lightning glue: one draw per optimizer step, shared by micro-batches and processes."""
import json
from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from data.instruct import IGNORE_INDEX, InstructionDataModule
from modules.adapters import attach_adapter
from modules.hf_model import byte_tokenizer
from modules.lm_module import NestedCausalLM
from modules.submodel import FixedSampler, SubModel, UniformSampler
from tests.conftest import LORA_TARGETS, tiny_llama_config


class RecordingModule(NestedCausalLM):
    """Records (optimizer step, rank active in the layers) for every micro-batch."""

    def __init__(self, *args, out_dir=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.out_dir = [], out_dir

    def loss(self, batch):
        loss = super().loss(batch)
        if self.training:
            ranks = {layer.rank for layer in self.model.modules() if hasattr(layer, "lora_A")}
            self.seen.append((self.global_step, ranks.pop()) if len(ranks) == 1 else None)
        return loss

    def on_train_end(self):
        if self.out_dir:
            (self.out_dir / f"ranks{self.global_rank}.json").write_text(json.dumps(self.seen))


def _module(out_dir=None, seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    nested = attach_adapter(model, "nested_lora", r_max=8, r_min=1, alpha=16, target_modules=LORA_TARGETS)
    return RecordingModule(model, byte_tokenizer(), nested, UniformSampler(nested.space, seed=seed),
                           optimizer=partial(torch.optim.AdamW, lr=1e-3), generate=False, out_dir=out_dir)


def _data(qa_file, batch_size=2):
    return InstructionDataModule(source=str(qa_file), tokenizer=byte_tokenizer(), batch_size=batch_size,
                                 limit_val=4, limit_test=4)


def test_prompt_tokens_are_masked_out_of_the_loss(qa_file):
    dm = _data(qa_file)
    dm.setup()
    record = dm.records["train"][0]
    batch = dm.collate([record], with_generation=True)
    prompt_len = len(dm.encode(record)["prompt"])
    assert torch.all(batch["labels"][0, :prompt_len] == IGNORE_INDEX)
    answer = batch["labels"][0, prompt_len:]
    answer = answer[answer != IGNORE_INDEX]
    assert dm.tokenizer.decode(answer, skip_special_tokens=True) == record["output"]
    assert answer[-1] == dm.tokenizer.eos_token_id
    # generation prompt is the same prompt, left-padded so it ends where the answer starts
    gen = batch["gen_input_ids"][0][batch["gen_attention_mask"][0].bool()]
    assert gen.tolist() == batch["input_ids"][0, :prompt_len].tolist()


def test_one_rank_per_optimizer_step_with_gradient_accumulation(qa_file, tmp_path):
    module = _module()
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, accumulate_grad_batches=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_data(qa_file))
    seen = module.seen
    assert len(seen) == 18 and None not in seen
    by_step = {}
    for step, rank in seen:
        by_step.setdefault(step, set()).add(rank)
    assert sorted(by_step) == list(range(6))
    assert all(len(ranks) == 1 for ranks in by_step.values())  # all 3 micro-batches share the draw
    sampler = module.sampler
    assert [by_step[s].pop() for s in range(6)] == [sampler.submodels(s)[0]["rank"] for s in range(6)]


def test_matryoshka_trains_every_rank_in_one_forward_and_every_rank_improves(qa_file, tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    nested = attach_adapter(model, "nested_lora", r_max=4, r_min=1, alpha=16, target_modules=LORA_TARGETS,
                            matryoshka=True)
    module = RecordingModule(model, byte_tokenizer(), nested, FixedSampler(nested.space, choice="largest"),
                             optimizer=partial(torch.optim.AdamW, lr=1e-2), generate=False)
    dm = _data(qa_file, batch_size=8)
    dm.setup()
    batch = dm.collate(dm.records["train"][:16])

    @torch.no_grad()
    def rank_losses():  # grid evaluation: each rank as the plain rank-b LoRA
        module.eval()
        losses = {}
        for b in range(1, 5):
            nested.apply(SubModel.of(rank=b))
            losses[b] = module.loss(batch).item()
        nested.apply(nested.space.largest)
        module.train()
        return losses

    before = rank_losses()
    trainer = pl.Trainer(accelerator="cpu", max_steps=12, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    after = rank_losses()
    assert {rank for _, rank in module.seen} == {4} and len(module.seen) == 12  # one forward per step, at r_max
    assert all(after[b] < before[b] - 0.3 for b in before), (before, after)  # every nested rank learned


def test_same_rank_on_two_ddp_spawn_processes(qa_file, tmp_path):
    torch.multiprocessing.set_sharing_strategy("file_system")  # fd sharing fails on these hosts (docs/offline.md)
    module = _module(out_dir=tmp_path)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=5, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_data(qa_file))
    rank0 = json.loads((tmp_path / "ranks0.json").read_text())
    rank1 = json.loads((tmp_path / "ranks1.json").read_text())
    assert len(rank0) == 5 and rank0 == rank1
    assert len({r for _, r in rank0}) > 1  # the rank really changes between steps


def test_checkpoint_holds_only_trainable_weights(qa_file, tmp_path):
    module = _module()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_data(qa_file))
    path = tmp_path / "adapter.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and all(".lora_" in k for k in state)
    twin = _module()
    twin.load_state_dict(state, strict=False)
    for k, v in state.items():
        torch.testing.assert_close(twin.state_dict()[k], v)


def test_answer_only_loss_equals_the_hf_loss(qa_file):
    module = _module()
    dm = _data(qa_file, batch_size=4)
    dm.setup()
    batch = dm.collate(dm.records["train"][:4])
    module.model.eval()
    hf = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(module.loss(batch), hf, atol=1e-5, rtol=1e-5)


def test_mmlu_style_choice_accuracy_matches_a_direct_computation(tmp_path):
    rows = [{"question": f"{a} + {b} = ?", "choices": [str(a + b + d) for d in (0, 1, 2, 3)], "answer": i % 4,
             "subject": "arithmetic"} for i, (a, b) in enumerate([(1, 2), (13, 4), (5, 1), (2, 2), (70, 1)])]  # uneven lengths: padding
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    dm = InstructionDataModule(source=str(path), format=None, tokenizer=byte_tokenizer(), max_length=512,
                               mc_eval={"source": str(path), "format": "mmlu", "split": "train",
                                        "shots_split": "train", "few_shot": 1})
    dm.records.update(train=[], validation=[], test=[])  # only the MC set matters here
    dm.setup()
    assert dm.records["mc"][0]["prompt"].count("Answer:") == 2  # one shot + the question
    batch = dm.collate_mc(dm.records["mc"])
    module = _module()
    module.eval()
    scores = module.choice_scores(batch)
    letters = [dm.tokenizer(f" {c}", add_special_tokens=False)["input_ids"][-1] for c in "ABCD"]
    for i, record in enumerate(dm.records["mc"]):  # each prompt alone, unpadded
        ids = torch.tensor([dm.tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]])
        alone = module.model(input_ids=ids).logits[0, -1].log_softmax(-1)[letters]
        torch.testing.assert_close(scores[i], alone, atol=1e-4, rtol=0)
    expected = (scores.argmax(-1) == torch.tensor([r["label"] for r in dm.records["mc"]])).float().mean()
    assert module.choice_accuracy(batch).item() == pytest.approx(expected.item())
    assert len({len(r["prompt"]) for r in dm.records["mc"]}) > 1  # padding was exercised


def test_exits_of_one_forward_equal_one_forward_per_depth(qa_file):
    """The `losses` hook: sub-models differing only in depth (SoFT's exits) share one pass through the
    blocks, with the same losses and gradients as one forward per sub-model."""
    from transformers import LlamaForCausalLM

    from modules.multi_exit import DecoderDepth
    from modules.nested_module import NestedModule
    from modules.submodel import AllSampler, NestedModel

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=3))
    lora = attach_adapter(model, "nested_lora", r_max=2, r_min=1, alpha=4, target_modules=LORA_TARGETS)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    nested = NestedModel({"rank": [1, 2], "depth": [1, 2, 3]},
                         {**lora.setters, "depth": DecoderDepth(model).set_depth})
    module = NestedCausalLM(model, byte_tokenizer(), nested, AllSampler(nested.space),
                            optimizer=partial(torch.optim.AdamW, lr=1e-3), generate=False)
    dm = _data(qa_file, batch_size=4)
    dm.setup()
    batch = dm.collate(dm.records["train"][:4])
    subs = nested.space.grid()

    def run(losses_fn):
        model.zero_grad(set_to_none=True)
        losses = losses_fn(module, batch, subs)
        torch.stack(losses).mean().backward()
        return [float(x) for x in losses], {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    shared, shared_grads = run(NestedCausalLM.losses)
    separate, separate_grads = run(NestedModule.losses)
    assert shared == pytest.approx(separate, abs=1e-5)
    assert len({round(x, 4) for x in shared}) == len(subs)  # every cell is its own sub-model
    for name in separate_grads:
        torch.testing.assert_close(shared_grads[name], separate_grads[name], atol=1e-5, rtol=1e-4)
