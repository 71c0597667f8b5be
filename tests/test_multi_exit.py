"""Multi-exit readout (SoFT): exits, losses and gradients checked against independent computations."""
import copy

import pytest
import torch

from conftest import tiny_llama_config
from modules.multi_exit import (IGNORE_INDEX, DecoderDepth, ExitHeads, MultiExitError, multi_exit_hidden,
                                multi_exit_loss, sft_loss)

LAYERS = 4


def tiny_model(arch: str = "llama", seed: int = 0):
    from transformers import (FalconConfig, FalconForCausalLM, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(tiny_llama_config(num_hidden_layers=LAYERS)).eval()
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=260, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=LAYERS, num_attention_heads=4,
                                            num_key_value_heads=2)).eval()
    return FalconForCausalLM(FalconConfig(vocab_size=260, hidden_size=64, num_hidden_layers=LAYERS,
                                          num_attention_heads=4)).eval()


def answer_batch(seed: int = 0, batch: int = 3, length: int = 12):
    """Left-padded rows; prompt and padding carry label -100, the last 4 tokens are the answer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 260, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is left-padded
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -4:] = ids[:, -4:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def truncated_copy(model, n: int):
    """An independent n-layer model: a deep copy whose layer list really holds n layers."""
    twin = copy.deepcopy(model)
    base = twin.base_model
    name = "layers" if hasattr(base, "layers") else "h"
    setattr(base, name, torch.nn.ModuleList(list(getattr(base, name)._modules.values())[:n]))
    twin.config.num_hidden_layers = n
    return twin


@pytest.mark.parametrize("arch", ["llama", "qwen2", "falcon"])
def test_exit_logits_equal_truncated_forward(arch):
    model, batch = tiny_model(arch), answer_batch()
    hidden = multi_exit_hidden(model, batch["input_ids"], batch["attention_mask"], [1, 2, LAYERS])
    head = model.get_output_embeddings()
    depth = DecoderDepth(model)
    for n in (1, 2, LAYERS):
        expected = truncated_copy(model, n)(input_ids=batch["input_ids"],
                                            attention_mask=batch["attention_mask"]).logits
        depth.set_depth(n)
        via_setter = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        depth.set_depth(LAYERS)
        torch.testing.assert_close(head(hidden[n]), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(via_setter, expected, rtol=1e-5, atol=1e-5)
    # all four layers are still parameters and in the state dict at a shallow depth
    depth.set_depth(1)
    assert len(depth.layers) == LAYERS and len(model.state_dict()) == len(tiny_model(arch).state_dict())


def test_sft_loss_equals_hf_answer_only_loss():
    model, batch = tiny_model(), answer_batch()
    hf = model(**batch).loss  # HF shifts the labels and averages over labels != -100
    torch.testing.assert_close(sft_loss(model, batch), hf)


def test_uniform_multi_exit_loss_is_mean_of_independent_exit_losses():
    model, batch = tiny_model(), answer_batch()
    exits = [1, 2, 3, LAYERS]
    independent = {n: truncated_copy(model, n)(**batch).loss for n in exits}
    total, per_exit = multi_exit_loss(model, batch, exits)
    for n in exits:
        torch.testing.assert_close(per_exit[n], independent[n])
    torch.testing.assert_close(total, torch.stack(list(independent.values())).mean())
    weighted, _ = multi_exit_loss(model, batch, [1, 3], weights=[1.0, 3.0])
    torch.testing.assert_close(weighted, (independent[1] + 3 * independent[3]) / 4)


def test_head_checkpointing_keeps_loss_and_gradients():
    batch = answer_batch()
    grads = []
    for ckpt in (True, False):
        model = tiny_model()
        loss, _ = multi_exit_loss(model, batch, [1, 2, LAYERS], checkpoint_head=ckpt)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k])


def test_gradients_reach_only_layers_below_each_exit():
    model, batch = tiny_model(), answer_batch()
    _, per_exit = multi_exit_loss(model, batch, [1, 3])
    layers = DecoderDepth(model).layers
    # the exit-1 loss moves layer 0 only; the exit-3 loss moves layers 0..2; layer 3 is never run
    for n, loss in per_exit.items():
        for i in range(LAYERS):
            params = list(layers[i].parameters())
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            reached = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert reached == (i < n), (n, i)


def test_exit_heads_start_from_shared_head_and_train_alone():
    model, batch = tiny_model(), answer_batch()
    heads = ExitHeads(model, [1, 2])
    shared, _ = multi_exit_loss(model, batch, [1, 2])
    own, _ = multi_exit_loss(model, batch, [1, 2], heads=heads)
    torch.testing.assert_close(own, shared)  # initialised from the shared head

    model.requires_grad_(False)  # SFT+ICT: frozen body
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(heads.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        multi_exit_loss(model, batch, [1, 2], heads=heads)[0].backward()
        opt.step()
    after, _ = multi_exit_loss(model, batch, [1, 2], heads=heads)
    assert after < own
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(heads.heads["1"].weight, heads.heads["2"].weight)  # separate heads


def test_set_depth_generate_equals_truncated_copy():
    model = tiny_model()
    depth = DecoderDepth(model)
    ids = torch.randint(3, 260, (1, 6), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=12, do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
    for n in (1, 2):
        calls = []
        hooks = [layer.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, layer in
                 enumerate(depth.layers._modules.values())]
        depth.set_depth(n)
        out = model.generate(ids, **kw)
        for h in hooks:
            h.remove()
        assert set(calls) == set(range(n))  # only n layers ran
        assert torch.equal(out, truncated_copy(model, n).generate(ids, **kw))
    depth.set_depth(LAYERS)
    assert torch.equal(model.generate(ids, **kw), truncated_copy(model, LAYERS).generate(ids, **kw))


def test_soft_trains_intermediate_exit_faster_than_sft():
    """Toy task (next token = previous + 1): after a few dozen steps SoFT's exit-1 loss is far lower."""
    torch.manual_seed(0)
    starts = torch.randint(0, 200, (64, 1))
    ids = (starts + torch.arange(10)) % 256 + 3  # (64, 10)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt: first 4 tokens
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    curves = {}  # exit-1 loss after steps 10, 20, 30
    for name, exits in (("soft", [1, 2, 3, LAYERS]), ("sft", [LAYERS])):
        model = tiny_model(seed=0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        initial = multi_exit_loss(model, batch, [1])[0].item()
        curves[name] = []
        for step in range(1, 31):
            opt.zero_grad()
            multi_exit_loss(model, batch, exits)[0].backward()
            opt.step()
            if step % 10 == 0:
                with torch.no_grad():
                    curves[name].append(multi_exit_loss(model, batch, [1])[0].item())
    assert all(s < f for s, f in zip(curves["soft"], curves["sft"])), curves
    assert curves["soft"][-1] < 0.6 * curves["sft"][-1] and curves["soft"][-1] < 0.2 * initial, curves


def test_exit_beyond_depth_is_one_clear_line():
    model = tiny_model()
    for bad in (0, LAYERS + 1):
        with pytest.raises(MultiExitError, match=rf"exit layer {bad} is outside the valid range 1..{LAYERS}") as err:
            DecoderDepth(model).set_depth(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(MultiExitError, match="outside the valid range"):
        multi_exit_loss(model, answer_batch(), [2, 9])


def test_architecture_without_layout_is_one_clear_line():
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=260, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                   num_attention_heads=2, word_embed_proj_dim=32))
    with pytest.raises(MultiExitError, match=r"OPTForCausalLM .*base_model\.layers \+ base_model\.norm") as err:
        DecoderDepth(opt)
    assert "\n" not in str(err.value)
