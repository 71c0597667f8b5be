"""modules/hf_model.py: the NF4 load converts every linear map, Falcon's nn.Linear subclass included."""
import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes")

# A tiny Falcon-40b-shaped model: new decoder architecture, grouped KV heads, no biases, tied lm_head.
FALCON = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
              new_decoder_architecture=True, num_kv_heads=2, bias=False)
BLOCK_LINEARS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


def _nf4():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


def _load(quant):
    from modules.hf_model import load_causal_lm

    return load_causal_lm("random:falcon", "float32", quant, random_config=FALCON)[0].eval()


def _block_linears(model):
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in BLOCK_LINEARS}


def test_falcon_nf4_load_quantizes_every_block_linear(cache):
    model, plain = _load(_nf4()), _load(None)
    layers = _block_linears(model)
    assert len(layers) == 2 * 4 and all(isinstance(m, bnb.nn.Linear4bit) for m in layers.values()), layers
    assert all(m.weight.dtype == torch.uint8 for m in layers.values())  # packed NF4 codes, no float copy
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32  # kept, as transformers
    assert model.lm_head.weight is model.transformer.word_embeddings.weight  # still tied
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        quantized, reference = model(ids).logits, plain(ids).logits
    assert torch.isfinite(quantized).all()
    # NF4 (4 bits per weight) moves a random tiny model's logits by ~13% of their norm: close, not equal
    assert (quantized - reference).norm() / reference.norm() < 0.25


def test_post_load_pass_quantizes_what_transformers_left_exactly_as_the_load(cache):
    """The safety net in load_causal_lm: plain from_pretrained leaves FalconLinear in float;
    quantize_unconverted_ then gives bit for bit the weights load_causal_lm's load-time conversion gives."""
    from transformers import AutoModelForCausalLM

    from modules.hf_model import materialize_random, quantize_unconverted_

    ours = _load(_nf4())
    plain = AutoModelForCausalLM.from_pretrained(materialize_random("falcon", FALCON), dtype=torch.float32,
                                                 quantization_config=_nf4(), device_map="cpu").eval()
    left = [n for n, m in _block_linears(plain).items() if not isinstance(m, bnb.nn.Linear4bit)]
    assert len(left) == 8, "transformers now converts nn.Linear subclasses itself: the patch can go"
    assert quantize_unconverted_(plain, _nf4()) == left
    assert quantize_unconverted_(plain, _nf4()) == []  # idempotent: nothing left
    expected, got = ours.state_dict(), plain.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key
