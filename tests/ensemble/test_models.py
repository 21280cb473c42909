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


# -- hostile model directories (issue 15) --------------------------------------------------------

import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

from memaudit.errors import MemauditError  # noqa: E402

_EVIL = """
import pathlib
pathlib.Path(MARKER).write_text("remote code ran")
from transformers import GPTNeoConfig
class EvilConfig(GPTNeoConfig):
    model_type = "evil"
"""


def evil_model_dir(tmp_path):
    """The tiny model, whose config asks for its own Python code (auto_map): running it leaves
    a RAN file. No network is involved: the code is local."""
    path = tmp_path / "evil-model"
    shutil.copytree(TINY_MODEL, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "evil"
    cfg["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModelForCausalLM": "evil.EvilModel",
    }
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "evil.py").write_text(_EVIL.replace("MARKER", repr(str(path / "RAN"))))
    return path


def test_remote_code_runs_only_when_the_caller_says_so(tmp_path):
    from memaudit.config import RunConfig
    from memaudit.data.records import Record
    from memaudit.ensemble.member import member_context
    from memaudit.store.rundir import RunDir

    model = evil_model_dir(tmp_path)
    cfg = RunConfig(data="d.jsonl", model=ModelConfig(str(model), trust_remote_code=True))
    run = RunDir(tmp_path / "run")
    run.check_or_create(cfg, [Record(0, "a", "x y", None, None, 1)], "abc")
    # What `memaudit train RUN`, a shard and report load: the stored flag is not honoured.
    stored = run.config()
    with pytest.raises(MemauditError, match="--model"):
        member_context(stored, run.records())
    with pytest.raises(MemauditError, match="--model"):
        load_base_model(stored.model, CPU, torch.float32)
    assert not (model / "RAN").exists()
    # The same directory with the flag given by the caller does run it (the test can fail).
    from transformers import AutoConfig

    AutoConfig.from_pretrained(model, trust_remote_code=True)
    assert (model / "RAN").exists()


@pytest.mark.parametrize("damage", ["corrupt", "pickled"])
def test_damaged_or_pickled_weights_are_one_line(tmp_path, damage):
    path = tmp_path / "model"
    shutil.copytree(TINY_MODEL, path)
    weights = path / "model.safetensors"
    if damage == "corrupt":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        import os

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path}/PWNED",))

        weights.unlink()
        torch.save({"x": Evil()}, path / "pytorch_model.bin")
    with pytest.raises(MemauditError, match="--model: cannot load") as err:
        load_base_model(ModelConfig(str(path)), CPU, torch.float32)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()
