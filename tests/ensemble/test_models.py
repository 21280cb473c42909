"""Model loading (memaudit.ensemble.models)."""

import torch

from memaudit.config import ModelConfig
from memaudit.ensemble.models import load_base_model
from tests.conftest import TINY_MODEL

CPU = torch.device("cpu")


def _adapters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_initialisation_is_the_same_in_every_load():
    """The adapters' random start is part of the model spec: two loads (as a rerun, a resumed
    run or a worker process makes them) give the same one, whatever the global RNG holds, and
    the global RNG is left as it was."""
    cfg = ModelConfig(str(TINY_MODEL), finetune="lora")
    torch.manual_seed(1)
    first = _adapters(load_base_model(cfg, CPU, torch.float32))
    after = torch.rand(3)
    torch.manual_seed(2)
    second = _adapters(load_base_model(cfg, CPU, torch.float32))
    assert first.keys() == second.keys() and len(first) == 8  # A, B: q_proj, v_proj x 2
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, atol=0, rtol=0)
    assert any(v.abs().sum() > 0 for v in first.values())  # a random start, not all zeros
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after)  # loading drew nothing from the caller's RNG
