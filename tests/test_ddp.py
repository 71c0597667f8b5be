"""Distributed training through Lightning strategies chosen in trainer/: a 2-process DDP fit on the CPU
keeps both ranks' weights identical and equal to one process training on the whole batch; FSDP / DeepSpeed
presets fail in one line where they cannot run."""
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DistributedSampler

from experiments.core.config import ConfigError
from tests import ddp_fit
from tests.conftest import ROOT, run


@pytest.mark.slow
def test_two_ddp_processes_end_with_the_weights_of_one_process_on_the_whole_batch(env, tmp_path):
    # Lightning seeds its DistributedSampler from PL_GLOBAL_SEED, which an earlier seed_everything in this
    # pytest process may have exported; the reference below deals the samples with seed 0
    env = {k: v for k, v in env.items() if k != "PL_GLOBAL_SEED"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # the reference: one process whose batch each step is rank 0's and rank 1's together (Lightning's
    # DistributedSampler shuffles the training set per epoch with seed 0 and deals each rank its half)
    dataset = ddp_fit.data()
    x, y = dataset.tensors
    steps = []
    for epoch in range(2):
        halves = []
        for rank in (0, 1):
            sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            halves.append(list(sampler))
        steps += [halves[0][i:i + ddp_fit.PER_RANK] + halves[1][i:i + ddp_fit.PER_RANK] for i in (0, 2)]
    model = ddp_fit.Regression(tmp_path)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=ddp_fit.LR)
    for batch in steps[:ddp_fit.STEPS]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model.linear(x[batch]), y[batch]).backward()  # the mean over both halves
        opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(rank0[k], rank1[k], rtol=0, atol=0)  # gradients all-reduced every step
        torch.testing.assert_close(rank0[k], v, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(v, start[k])  # it did train
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)  # rank 0 wrote it
    assert ckpt["global_step"] == ddp_fit.STEPS


def _validate(overrides):
    from experiments.core.tasks import validate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["trainer=fsdp", "trainer.accelerator=cpu"], "Lightning runs fsdp on CUDA GPUs only; valid choices on"),
    (["trainer=fsdp"], "quantization.config.bnb_4bit_quant_storage=uint8: FSDP shards only float"),
    (["trainer=fsdp", "quantization.config.bnb_4bit_quant_storage=bfloat16"],  # fine: the next check speaks
     "trainer.accelerator=gpu but this machine has no CUDA device"),
])
def test_fsdp_preset_is_checked_before_anything_loads(overrides, message):
    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only machine")
    with pytest.raises(ConfigError, match=message):
        _validate(["model=tiny_llama", *overrides])  # the default experiment (QDyLoRA: NF4) on a tiny model


def test_deepspeed_preset_without_deepspeed_is_one_line(env, tmp_path):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed")
    proc = run(["trainer=deepspeed", "model=tiny_llama", f"hydra.run.dir={tmp_path}"], env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last == (
        "error: trainer.strategy=lightning.pytorch.strategies.DeepSpeedStrategy needs the deepspeed package, "
        "which is not installed: `pip install deepspeed` on the CUDA machine, or use trainer=fsdp or trainer=ddp")


def test_a_4bit_base_stored_as_bfloat16_holds_the_same_bits_in_a_dtype_fsdp_shards(tiny_llama):
    """What trainer=fsdp asks of a 4-bit base: bitsandbytes stores the same packed NF4 bits in a float dtype
    (FSDP flattens only floating-point tensors); the model computes exactly what the uint8-stored one does."""
    import copy

    import bitsandbytes as bnb

    from modules.hf_model import quantize_nf4_

    models = {dtype: quantize_nf4_(copy.deepcopy(tiny_llama), torch.float32, quant_storage=dtype)
              for dtype in (torch.uint8, torch.bfloat16)}
    weights = {dtype: [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
               for dtype, model in models.items()}
    assert weights[torch.bfloat16] and all(w.dtype == torch.bfloat16 and w.is_floating_point()
                                           for w in weights[torch.bfloat16])
    assert not any(w.is_floating_point() for w in weights[torch.uint8])
    for packed, stored in zip(weights[torch.uint8], weights[torch.bfloat16]):
        assert torch.equal(stored.data.view(torch.uint8).flatten(), packed.data.flatten())
    ids = torch.tensor([[1, 5, 9, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(models[torch.bfloat16](ids).logits, models[torch.uint8](ids).logits,
                                   rtol=0, atol=0)
