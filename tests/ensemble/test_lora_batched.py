"""K LoRA adapters on one frozen base (memaudit.ensemble.lora_batched): the batched layer is
peft's layer for each member, and only plain peft LoRA layers are packed."""

import torch

from memaudit.config import ModelConfig
from memaudit.ensemble.lora_batched import BatchedLora, find_lora_layers
from memaudit.ensemble.models import MemberFactory, load_base_model
from tests.conftest import TINY_MODEL, tiny_setup

CPU = torch.device("cpu")


def _factory(finetune: str, dtype: torch.dtype) -> MemberFactory:
    torch.manual_seed(0)  # the LoRA initialisation
    cfg = ModelConfig(str(TINY_MODEL), finetune=finetune, lora_targets=("q_proj", "v_proj", "c_fc"))
    return MemberFactory(load_base_model(cfg, CPU, dtype))


def test_lora_packing_matches_peft_before_training():
    """The batched layer computes peft's base(x) + B(A(x)) * alpha / r for each member."""
    _, _, tokens, _ = tiny_setup(2)
    factory = _factory("lora", torch.float64)
    model = factory.fresh().eval()
    sites = find_lora_layers(model)
    assert len(sites) == 6  # q_proj, v_proj, c_fc in 2 layers
    torch.manual_seed(1)
    for site in sites:  # non-zero B, so that the adapters matter
        torch.nn.init.normal_(site.layer.lora_B["default"].weight, std=0.1)
    lora = BatchedLora(model, sites, 2)
    with torch.no_grad():
        for name, p in lora.params.items():
            if "lora_B" in name:
                p[1].mul_(-1)  # member 1 gets different adapters
    ids = tokens.batch([0, 1], CPU)["input_ids"][:, :8]
    with torch.no_grad(), lora.active():
        both = model(input_ids=torch.cat([ids, ids])).logits
    for i in range(2):
        lora.load(i)
        with torch.no_grad():
            alone = model(input_ids=ids).logits
        torch.testing.assert_close(both[2 * i : 2 * i + 2], alone, atol=1e-10, rtol=0)
    assert not torch.allclose(both[:2], both[2:])
    # Routed by row (mixed-adapter decoding): rows of member 1, 0 equal the blocks above.
    with torch.no_grad(), lora.routed(torch.tensor([1, 1, 0, 0])) as keep:
        mixed = model(input_ids=torch.cat([ids, ids])).logits
        keep(torch.tensor([2, 3]))  # rows 0 and 1 leave the batch: member 0's rows stay
        left = model(input_ids=ids).logits
    torch.testing.assert_close(mixed[:2], both[2:], atol=1e-10, rtol=0)
    torch.testing.assert_close(mixed[2:], both[:2], atol=1e-10, rtol=0)
    torch.testing.assert_close(left, both[:2], atol=1e-10, rtol=0)
    # Leaving the context puts the peft layers back.
    assert all(getattr(s.parent, s.attr) is s.layer for s in sites)


def test_only_plain_lora_models_are_packed():
    assert find_lora_layers(_factory("full", torch.float32).model) is None  # no LoRA at all
    model = _factory("lora", torch.float32).model
    sites = find_lora_layers(model)
    site = sites[0]
    site.layer.use_dora = {"default": True}  # DoRA: not what BatchedLoraLinear computes
    assert find_lora_layers(model) is None
