"""BaseModule: several named optimizers, frozen references out of checkpoints and training, RNG state saved."""
from functools import partial

import torch
from torch import nn

from modules.base_module import BaseModule


class TwoNets(BaseModule):
    """A GAN-shaped module: generator and critic with their own optimizers, plus a frozen previous generator."""

    def __init__(self):
        super().__init__(optimizer={"generator": partial(torch.optim.Adam, lr=1e-3),
                                    "critic": partial(torch.optim.SGD, lr=0.1)})
        self.generator, self.critic = nn.Linear(3, 3), nn.Linear(3, 1)
        self.add_reference("previous", nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))

    def optimizer_groups(self):
        return {"generator": list(self.generator.parameters()), "critic": list(self.critic.parameters())}


def test_several_named_optimizers_from_config():
    configs = TwoNets().configure_optimizers()
    assert [type(c["optimizer"]).__name__ for c in configs] == ["Adam", "SGD"]
    assert configs[1]["optimizer"].param_groups[0]["lr"] == 0.1


def test_a_reference_stays_frozen_in_eval_mode_and_out_of_checkpoints():
    module = TwoNets().train()
    assert not module.previous.training and not any(p.requires_grad for p in module.previous.parameters())
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"generator.weight", "generator.bias", "critic.weight", "critic.bias"}


def test_the_rng_state_travels_with_the_checkpoint():
    module = TwoNets()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    expected = torch.rand(3)
    torch.rand(5)  # anything drawn between the save and the restart
    module.on_load_checkpoint(checkpoint)
    module.on_train_start()
    assert torch.equal(torch.rand(3), expected)
