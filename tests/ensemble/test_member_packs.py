"""Packed training (memaudit.ensemble.member_packs) equals training the members one at a time.

In float64 the two agree to rounding (1e-10): the same data order, loss, AdamW and schedule per
member, ragged step counts and micro-batches included. In float32 they agree to float32
rounding amplified by AdamW over a few steps (its update is about lr * sign(g) wherever g is
at rounding level), checked on the losses.
"""

import dataclasses

import numpy as np
import pytest
import torch

from memaudit.config import ModelConfig, RunConfig, TrainConfig
from memaudit.ensemble.evaluate import record_losses
from memaudit.ensemble.member_packs import choose_pack, packed_losses, train_packed
from memaudit.ensemble.models import MemberFactory, load_base_model
from memaudit.ensemble.train import train_member
from memaudit.errors import MemauditError
from tests.conftest import TINY_MODEL, tiny_setup

CPU = torch.device("cpu")
# Ragged: 2 epochs of batch 8 in micro-batches of 5, subsets of 16, 23 and 9 records (2, 3
# and 2 steps per epoch), one warmup step.
CFG = TrainConfig(
    epochs=2, lr=3e-3, batch_size=8, micro_batch_size=5, max_length=64, warmup_steps=1
)
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def setup():
    records, tok, tokens, _ = tiny_setup(40)
    rng = np.random.default_rng(0)
    subsets = [np.flatnonzero(rng.random(40) < 0.5) for _ in SEEDS]
    subsets[2] = subsets[2][:9]
    assert [len(s) for s in subsets] == [16, 23, 9]
    return tokens, subsets


def _factory(finetune: str, dtype: torch.dtype) -> MemberFactory:
    torch.manual_seed(0)  # the LoRA initialisation
    cfg = ModelConfig(str(TINY_MODEL), finetune=finetune, lora_targets=("q_proj", "v_proj", "c_fc"))
    return MemberFactory(load_base_model(cfg, CPU, dtype))


def _trained(factory: MemberFactory):
    return {n: p.detach().clone() for n, p in factory.model.named_parameters() if p.requires_grad}


def _compare(factory, tokens, subsets, cfg, param_atol, loss_atol):
    alone = []
    for subset, seed in zip(subsets, SEEDS, strict=True):
        stats = train_member(factory.fresh(), tokens, subset, cfg, seed, CPU)
        alone.append((stats, _trained(factory), record_losses(factory.model, tokens, 16, CPU)))
    factory.fresh()
    pack, packed_stats = train_packed(factory.model, tokens, subsets, cfg, SEEDS, CPU)
    packed_eval = packed_losses(pack, tokens, 7, CPU)
    for i, (stats, params, losses) in enumerate(alone):
        factory.fresh()
        pack.load(i)
        assert packed_stats[i].steps == stats.steps
        np.testing.assert_allclose(packed_stats[i].epoch_losses, stats.epoch_losses, rtol=1e-5)
        for name, value in _trained(factory).items():
            torch.testing.assert_close(value, params[name], atol=param_atol, rtol=0)
        got = record_losses(factory.model, tokens, 16, CPU)
        np.testing.assert_allclose(got, losses, atol=loss_atol, rtol=0)
        # Packed evaluation: the same losses as the member's own, to rounding.
        np.testing.assert_allclose(packed_eval[i], got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_packed_equals_one_at_a_time_float64(setup, finetune):
    """The logic: equal to rounding in float64 (the loss itself is float32, as in train_member)."""
    tokens, subsets = setup
    factory = _factory(finetune, torch.float64)
    _compare(factory, tokens, subsets, CFG, param_atol=1e-10, loss_atol=1e-10)


# Full fine-tuning: the unpacked loop applies the output head to scored positions only, the
# packed one to all, so float32 rounding differs from the first step and AdamW amplifies it:
# measured up to 4e-4 after 6 steps (float64, above, is exact).
@pytest.mark.parametrize("finetune,loss_atol", [("full", 2e-3), ("lora", 1e-5)])
def test_packed_equals_one_at_a_time_float32(setup, finetune, loss_atol):
    tokens, subsets = setup
    factory = _factory(finetune, torch.float32)
    cfg = dataclasses.replace(CFG, lr=1e-3)
    # Parameters: AdamW turns rounding-level gradients into steps of up to lr each.
    _compare(factory, tokens, subsets, cfg, param_atol=2 * cfg.lr, loss_atol=loss_atol)


def test_choose_pack():
    factory = _factory("full", torch.float32)
    run = lambda pack: RunConfig(data="x", model=ModelConfig("m"), pack=pack)  # noqa: E731
    assert choose_pack(run("auto"), factory.model, CPU, 10)[0] == 1  # CPU: measured slower
    assert choose_pack(run("off"), factory.model, CPU, 10)[0] == 1
    assert choose_pack(run("4"), factory.model, CPU, 10)[0] == 4
    assert choose_pack(run("16"), factory.model, CPU, 3)[0] == 3
    assert choose_pack(run(8), factory.model, CPU, 10)[0] == 8
    factory.model.transformer.drop.p = 0.1  # dropout: never packed
    k, why = choose_pack(run("4"), factory.model, CPU, 10)
    assert k == 1 and "dropout" in why
    factory.model.transformer.drop.p = 0.0
    with pytest.raises(MemauditError, match="--pack"):
        run("many")
    assert "pack" not in run("4").fingerprint()  # rounding only: a run may resume with another


@pytest.mark.parametrize(
    "finetune,decode_fails", [("full", False), ("lora", False), ("lora", True)]
)
def test_end_to_end_packed_equals_unpacked(tmp_path, monkeypatch, finetune, decode_fails):
    """Through the Python API: the same loss matrix, extractions and metadata as one by one (a
    LoRA pack decodes its extraction members in mixed-adapter batches; if that fails, member by
    member, keeping the trained pack)."""
    from memaudit import Audit
    from memaudit.ensemble import member_packs as packed

    decoded = []  # what the mixed-adapter decoder returned, per call
    real = packed.packed_continuations

    def spy(*args, **kwargs):
        if decode_fails:
            decoded.append(None)
            raise RuntimeError("simulated")
        decoded.append(real(*args, **kwargs))
        return decoded[-1]

    monkeypatch.setattr(packed, "packed_continuations", spy)
    from memaudit.config import EnsembleConfig, ExtractConfig
    from tests.conftest import DEMO_SOURCE

    data = tmp_path / "data.jsonl"
    data.write_text("".join(DEMO_SOURCE.read_text().splitlines(True)[:30]))
    runs = {}
    for pack in ("off", "3"):
        cfg = RunConfig(
            data=str(data),
            model=ModelConfig(str(TINY_MODEL), finetune=finetune),
            preset="nq",
            train=TrainConfig(epochs=2, lr=1e-3, batch_size=8, max_length=64),
            ensemble=EnsembleConfig(models=5),
            extract=ExtractConfig(models=2),
            device="cpu",
            pack=pack,
        )
        audit = Audit(cfg, tmp_path / pack)
        assert audit.train() == [0, 1, 2, 3, 4]
        runs[pack] = audit
    off, on = runs["off"], runs["3"]
    # float32: rounding amplified by AdamW (see the float32 test above); measured 8e-4.
    np.testing.assert_allclose(on.losses(), off.losses(), atol=3e-3, rtol=0)
    metas = [on.run_dir.model_meta(j) for j in range(5)]
    assert [m["pack"] for m in metas] == [3, 3, 3, 2, 2]
    assert [m["steps"] for m in metas] == [m["steps"] for m in off.run_dir.model_metas(5)]
    ids_on, ext_on = on.run_dir.extraction(5)
    ids_off, ext_off = off.run_dir.extraction(5)
    assert ids_on == ids_off == [0, 1] and len(ext_on) == len(ext_off) == 2
    # Members 0 and 1 share a pack: a LoRA pack decodes them together.
    assert [d is not None for d in decoded] == ([not decode_fails] if finetune == "lora" else [])
    assert all("pack_error" not in m for m in metas)  # a failed mixed decoding retrains nothing
    if finetune == "lora":  # trained equal to 1e-5: the same continuations
        for a, b in zip(ext_on, ext_off, strict=True):
            assert a["generations"] == b["generations"]


def test_cli_pack_option_is_checked(tmp_path, monkeypatch, cli):
    from tests.conftest import DEMO_SOURCE, tree

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(DEMO_SOURCE.read_text().splitlines(True)[0])
    before = tree(tmp_path)
    args = ["--model", TINY_MODEL, "--preset", "nq", "--finetune", "full", "--models", "2"]
    res = cli("run", "d.jsonl", *args, "--pack", "0", "--out", "run")
    assert res.code == 2 and "--pack: expected auto, off or a positive integer" in res.err
    assert tree(tmp_path) == before


def test_failed_packs_fall_back(monkeypatch):
    """Out of GPU memory: the pack is halved (and K for the rest); any other error: the pack's
    members are trained alone, each saying why."""
    from types import SimpleNamespace

    from memaudit.ensemble import member as ensemble
    from memaudit.ensemble import member_packs as packed

    packs = []

    def members(ctx, js, columns, on_step=None):
        packs.append(list(js))
        if len(js) > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        if js[0] == 6:
            raise RuntimeError("simulated failure")
        return [SimpleNamespace(meta={"pack": len(js)}) for _ in js]

    def alone(ctx, j, column, on_step=None):
        return SimpleNamespace(meta={"pack": 1})

    monkeypatch.setattr(packed, "compute_members", members)
    monkeypatch.setattr(ensemble, "compute_member", alone)
    ctx = SimpleNamespace(device=CPU)
    out = list(packed.map_packed(ctx, list(range(9)), np.ones((4, 9), bool), 4, "test"))
    assert [j for j, _ in out] == list(range(9))
    assert packs == [[0, 1, 2, 3], [0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert [o.meta["pack"] for _, o in out] == [2, 2, 2, 2, 2, 2, 1, 1, 1]
    assert out[6][1].meta["pack_error"] == "RuntimeError: simulated failure"


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_diverged_member_leaves_the_others_exact(setup, monkeypatch, finetune):
    """Member 1's loss turns NaN at its second step: it is reported diverged (as train_member
    would raise), and members 0 and 2 still equal their one-at-a-time selves."""
    from memaudit.ensemble import member_packs as packed

    tokens, subsets = setup
    factory = _factory(finetune, torch.float64)
    alone = {}
    for i in (0, 2):
        train_member(factory.fresh(), tokens, subsets[i], CFG, SEEDS[i], CPU)
        alone[i] = _trained(factory)
    make = packed._pack_for
    calls = []

    def poisoned(model, k):
        pack = make(model, k)
        forward = pack.forward

        def forward_nan(ids):
            logits = forward(ids)
            calls.append(1)
            if len(calls) == 3:  # step 2's first micro-batch (2 per step)
                logits = logits.clone()
                logits[1] = float("nan")
            return logits

        pack.forward = forward_nan
        return pack

    monkeypatch.setattr(packed, "_pack_for", poisoned)
    factory.fresh()
    pack, stats = train_packed(factory.model, tokens, subsets, CFG, SEEDS, CPU)
    assert stats[1] == "non-finite training loss at step 1"
    for i in (0, 2):
        factory.fresh()
        pack.load(i)
        for name, value in _trained(factory).items():
            torch.testing.assert_close(value, alone[i][name], atol=1e-10, rtol=0)


def test_auto_pack_on_cuda_follows_free_memory(monkeypatch):
    """auto on CUDA: K from the free memory and the estimate per member, capped at 64."""
    factory = _factory("lora", torch.float32)
    cfg = RunConfig(data="x", model=ModelConfig("m"), train=CFG, pack="auto")
    cuda = torch.device("cuda")
    for free_gib, expect in [(0.001, 1), (1.0, None), (1000.0, 64)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d, f=free_gib: (f * 2**30, 2**40))
        k, why = choose_pack(cfg, factory.model, cuda, 1000)
        assert why.startswith("auto: ") and "GiB free" in why
        assert k == expect if expect else 1 < k < 64
    assert choose_pack(cfg, factory.model, cuda, 5)[0] == 5  # never more than pending


def test_lora_pack_decodes_in_mixed_adapter_batches(setup):
    """Every LoRA member's greedy continuations from one set of mixed-adapter batches (rows
    leaving the batch as they finish, their routes with them) equal its own, decoded alone."""
    from memaudit.ensemble.extract import extraction_targets, greedy_continuations
    from memaudit.ensemble.member_packs import packed_continuations

    tokens, subsets = setup
    _, tok, _, _ = tiny_setup(1)
    factory = _factory("lora", torch.float32)
    cfg = dataclasses.replace(CFG, lr=3e-2, epochs=4)  # adapters that change the continuations
    pack, _ = train_packed(factory.fresh(), tokens, subsets, cfg, SEEDS, CPU)
    targets = extraction_targets(tokens, tok, 32)
    together = packed_continuations(pack, [2, 0, 1], targets, tok, 7, CPU)
    assert together is not None  # the routed first batch matched member 2 alone
    alone = []
    for i in range(3):
        pack.load(i)
        alone.append(greedy_continuations(factory.model, targets, tok, 7, CPU))
    assert together == [alone[2], alone[0], alone[1]]
    # Not vacuous: the members continue some records differently.
    assert sum(len({a[t] for a in alone}) > 1 for t in range(len(tokens))) >= 20  # 32 of 40


def test_mixed_decoding_out_of_memory_halves_the_batch(monkeypatch):
    """Out of GPU memory, mixed-adapter decoding retries with half the records per batch while
    a mixed batch still holds more rows than one member's; then members decode one by one."""
    from types import SimpleNamespace

    from memaudit.ensemble import member_packs as packed

    calls = []

    def decode(pack, members, targets, tokenizer, batch_size, device):
        calls.append(batch_size)
        if batch_size * len(members) > limit:
            raise torch.cuda.OutOfMemoryError("simulated")
        return [[f"member {i}"] for i in members]

    monkeypatch.setattr(packed, "packed_continuations", decode)
    extract = SimpleNamespace(batch_size=128)
    ctx = SimpleNamespace(n_extract=4, cfg=SimpleNamespace(extract=extract), targets=None,
                          tokenizer=None, device=CPU)  # fmt: skip
    pack = packed._LoraPack.__new__(packed._LoraPack)
    stats = [None, None, None, "diverged", None]  # member 3 is not decoded; j = 4 is not either
    limit = 200  # rows: 3 members x 128 do not fit, 3 x 64 do
    texts, _ = packed._decode_together(ctx, pack, [0, 1, 2, 3, 4], stats)
    assert calls == [128, 64] and texts == {i: [f"member {i}"] for i in (0, 1, 2)}
    calls.clear()
    limit = 10  # never fits: one by one
    assert packed._decode_together(ctx, pack, [0, 1, 2, 3, 4], stats)[0] == {}
    assert calls == [128, 64]  # 32 x 3 members = 96 rows: no more than one member's 128
