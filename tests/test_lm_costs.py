"""The LM's per-sub-model costs (experiments/paradigms/lm_costs.py): parameters, FLOPs, memory."""
import pytest
import torch


def test_a_4bit_base_costs_the_flops_and_params_of_fp32_at_its_packed_memory():
    """bitsandbytes' 4-bit matmul is a custom op: its FLOPs are counted by its own formula."""
    from transformers import BitsAndBytesConfig

    from experiments.paradigms.lm_costs import forward_costs
    from modules.hf_model import load_causal_lm
    from tests.conftest import tiny_llama_config

    config = tiny_llama_config().to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    ids = (torch.arange(16) + 1).unsqueeze(0)
    costs = {}
    for name, quant in (("fp32", None), ("nf4", nf4)):
        model, _ = load_causal_lm("random:llama", "float32", quant, False, "sdpa", {k: config[k] for k in keys})
        costs[name] = forward_costs(model.eval(), ids)
    assert costs["nf4"]["flops"] == costs["fp32"]["flops"] > 0
    assert costs["nf4"]["params"] == costs["fp32"]["params"]
    assert costs["nf4"]["memory_mb"] < 0.5 * costs["fp32"]["memory_mb"]  # 4-bit linears, fp32 embeddings and norms


@pytest.mark.parametrize("tied", [False, True])
def test_params_count_what_the_forward_runs_once_and_an_exit_skips_later_layers(tied):
    from transformers import LlamaForCausalLM

    from experiments.paradigms.lm_costs import forward_costs
    from modules.multi_exit import DecoderDepth
    from tests.conftest import tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=tied)).eval()
    ids = torch.ones(1, 8, dtype=torch.long)
    total = sum(p.numel() for p in model.parameters())  # a tied embedding / head counted once
    assert forward_costs(model, ids)["params"] == total
    DecoderDepth(model).set_depth(1)
    second = sum(p.numel() for p in model.model.layers[1].parameters())
    exit_1 = forward_costs(model, ids)
    assert exit_1["params"] == total - second and exit_1["memory_mb"] == pytest.approx(4 * (total - second) / 2**20)

