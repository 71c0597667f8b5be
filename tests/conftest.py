"""Offline, CPU-only test setup: nothing reaches a hub, W&B is off, caches live in a temp dir."""
import json
import os
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# One thread per process: on a shared 2-core machine two OpenMP threads per process thrash badly.
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                  WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")

def run(args, env, cwd=ROOT, timeout=300, process=False):
    """``python run.py <args>`` as a user runs it, output captured: in this process through ``run.cli`` (no
    interpreter start and imports per call), or with ``process=True`` in a subprocess (what needs a process
    of its own: a fresh interpreter's warnings, signals, launchers that fork)."""
    import subprocess

    if process:
        return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    return _run_in_process([str(a) for a in args], env, cwd)


def _run_in_process(args, env, cwd):
    import contextlib
    import io
    import logging
    import subprocess
    import traceback

    import torch

    import run as entry  # run.py at the repository root

    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry.cli(list(args))
            except BaseException:  # what would end a real process with a traceback
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
        root = logging.getLogger()
        for handler in root.handlers[:]:  # Hydra's handlers of this run (its log file, the captured stdout)
            root.removeHandler(handler)
            handler.close()
    return subprocess.CompletedProcess([sys.executable, "run.py", *args], code, out.getvalue(), err.getvalue())


def run_until_killed(args, env, marker: Path, timeout: float = 120) -> None:
    """Start ``run.py args`` and SIGKILL it as soon as ``marker`` exists (a checkpoint midway): a killed run."""
    import signal
    import subprocess
    import time

    job = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of run.py subprocesses: a cache folder of their own for the test module."""
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONUNBUFFERED": "1"}


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


@pytest.fixture
def tiny_llama():
    """A fresh tiny random llama (fp32, eval mode) and its state dict for building twins."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    return model


def write_addition_qa(path: Path, n: int = 80, seed: int = 0) -> Path:
    """A tiny QA set in our record format: 'a+b=?' -> the sum (learnable in a few steps)."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(n):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            fh.write(json.dumps({"instruction": f"{a}+{b}=?", "input": "", "output": str(a + b),
                                 "answers": [str(a + b)]}) + "\n")
    return path


@pytest.fixture
def qa_file(tmp_path):
    return write_addition_qa(tmp_path / "qa.jsonl")


def save_tiny_whisper(folder, d_model: int = 64) -> str:
    """A 2-layer random Whisper (and its feature extractor) saved as an HF folder, for speech tests."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=64, d_model=d_model, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                           num_mel_bins=80, max_source_positions=1500, max_target_positions=16, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return str(folder)
