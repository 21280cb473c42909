import numpy as np
import pytest
import torch

from memaudit.config import ModelConfig, TrainConfig
from memaudit.data.tokens import tokenize_records
from memaudit.ensemble.evaluate import record_losses
from memaudit.ensemble.models import MemberFactory, load_base_model
from memaudit.ensemble.train import _PACKS, packs, token_nll, train_member
from tests.conftest import TINY_MODEL, tiny_setup

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    return tiny_setup(40)


def test_eval_loss_equals_transformers_loss(setup):
    """Our batched, padded, length-sorted evaluation equals the model's own per-record loss."""
    records, tok, tokens, factory = setup
    model = factory.fresh()
    ours = record_losses(model, tokens, batch_size=7, device=CPU)
    model.eval()
    with torch.no_grad():
        for t in range(len(records)):
            ids = torch.as_tensor(tokens.ids[t])[None]
            ref = model(input_ids=ids, labels=ids).loss.item()
            assert ours[t] == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_completion_loss_scores_only_the_answer(setup):
    records, tok, _, factory = setup
    tokens = tokenize_records(records, tok, 64, "completion", "demo")
    model = factory.fresh()
    ours = record_losses(model, tokens, batch_size=16, device=CPU)
    model.eval()
    with torch.no_grad():
        for t in range(5):
            ids = torch.as_tensor(tokens.ids[t])[None]
            labels = ids.clone()
            labels[0, : tokens.score_from[t]] = -100
            assert ours[t] == pytest.approx(
                model(input_ids=ids, labels=labels).loss.item(), rel=1e-5
            )


def test_training_is_deterministic_and_lowers_loss(setup):
    records, tok, tokens, factory = setup
    cfg = TrainConfig(epochs=3, lr=3e-3, batch_size=8, max_length=64)
    subset = np.arange(0, 40, 2)
    before = record_losses(factory.fresh(), tokens, 16, CPU)
    a = train_member(factory.fresh(), tokens, subset, cfg, seed=7, device=CPU)
    la = record_losses(factory.model, tokens, 16, CPU)
    b = train_member(factory.fresh(), tokens, subset, cfg, seed=7, device=CPU)
    lb = record_losses(factory.model, tokens, 16, CPU)
    assert a.epoch_losses == b.epoch_losses and np.array_equal(la, lb)
    assert a.epoch_losses[-1] < a.epoch_losses[0]
    # Trained records got easier than held-out ones.
    gain = before - la
    assert gain[subset].mean() > gain[np.setdiff1d(np.arange(40), subset)].mean()
    # fresh() really restores the base.
    assert np.array_equal(record_losses(factory.fresh(), tokens, 16, CPU), before)
    c = train_member(factory.fresh(), tokens, subset, cfg, seed=8, device=CPU)
    assert c.epoch_losses != a.epoch_losses  # another seed, another data order


def test_micro_batches_give_the_same_model(setup):
    records, tok, tokens, factory = setup
    subset = np.arange(24)
    full = TrainConfig(epochs=2, lr=3e-3, batch_size=12, max_length=64)
    micro = TrainConfig(epochs=2, lr=3e-3, batch_size=12, micro_batch_size=5, max_length=64)
    train_member(factory.fresh(), tokens, subset, full, seed=1, device=CPU)
    la = record_losses(factory.model, tokens, 16, CPU)
    train_member(factory.fresh(), tokens, subset, micro, seed=1, device=CPU)
    lb = record_losses(factory.model, tokens, 16, CPU)
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)


def test_lora_member_trains_only_adapters_and_resets(setup):
    records, tok, tokens, _ = setup
    model = load_base_model(
        ModelConfig(str(TINY_MODEL), finetune="lora", lora_r=4), CPU, torch.float32
    )
    factory = MemberFactory(model)
    assert 0 < factory.n_trainable < factory.n_params / 10
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = record_losses(factory.fresh(), tokens, 16, CPU)
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=8, max_length=64)
    train_member(factory.fresh(), tokens, np.arange(20), cfg, seed=0, device=CPU)
    after = record_losses(factory.model, tokens, 16, CPU)
    assert not np.allclose(before, after)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n])
    assert np.array_equal(record_losses(factory.fresh(), tokens, 16, CPU), before)


def _full_logits_nll(model, batch):
    """The reference: the model's own logits at every position, gathered afterwards."""
    ids, pos = batch["input_ids"], batch["positions"]
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    logits = logits.reshape(-1, logits.shape[-1])[pos]
    return torch.nn.functional.cross_entropy(logits, ids.reshape(-1)[pos + 1], reduction="none")


def test_token_nll_runs_the_head_on_scored_positions_only(setup):
    from memaudit.ensemble import train

    records, tok, tokens, factory = setup
    model = factory.fresh()
    batch = tokens.batch([0, 5, 9, 3], CPU)
    nll, rows = train.token_nll(model, batch)
    assert train._SPLIT[model] is not None  # the tiny GPT-Neo's head is the whole story
    assert len(nll) == sum(len(tokens.ids[i]) - 1 for i in [0, 5, 9, 3])
    assert rows.tolist() == sorted(rows.tolist())
    with torch.no_grad():
        torch.testing.assert_close(nll.detach(), _full_logits_nll(model, batch))


def test_token_nll_falls_back_when_the_model_rescales_its_logits(setup):
    """A model whose logits are not head(hidden) (soft-capping, a logit scale) keeps its own."""
    from memaudit.ensemble import train

    _, _, tokens, _ = setup
    model = load_base_model(ModelConfig(str(TINY_MODEL), finetune="full"), CPU, torch.float32)

    def halve(module, args, output):
        output.logits = output.logits * 0.5
        return output

    model.register_forward_hook(halve)
    batch = tokens.batch([1, 2, 3], CPU)
    nll, _ = train.token_nll(model, batch)
    assert train._SPLIT[model] is None
    with torch.no_grad():
        torch.testing.assert_close(nll.detach(), _full_logits_nll(model, batch))


def test_fast_activations_are_the_same_function():
    from transformers import AutoModelForCausalLM

    from memaudit.ensemble.models import fast_activations

    stock = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    fast = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    assert fast_activations(fast) == stock.config.num_layers
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)


def test_divergence_is_reported(setup, monkeypatch):
    from memaudit.ensemble import train
    from memaudit.ensemble.train import TrainingDiverged

    _, _, tokens, factory = setup
    token_nll = train.token_nll
    monkeypatch.setattr(train, "token_nll", lambda m, b: (token_nll(m, b)[0] * np.nan, None))
    cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=8, max_length=64)
    with pytest.raises(TrainingDiverged, match="non-finite training loss in epoch 1"):
        train_member(factory.fresh(), tokens, np.arange(16), cfg, seed=0, device=CPU)


class _NoPositions(torch.nn.Module):
    """A causal LM that drops position ids: packed records would attend to each other."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_packed_rows_give_the_padded_losses(setup):
    """Records laid end to end (position ids restarting, no mask) score as when padded."""
    _, _, tokens, factory = setup
    model = factory.fresh().eval()
    idx = np.arange(3, 19)
    packed = tokens.packed_batch(idx, CPU, max_width=64)
    padded = tokens.batch(idx, CPU, score_all=True)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # it saved tokens
    assert packed["input_ids"].shape[1] <= 64
    with torch.no_grad():
        a, rows_a = token_nll(model, packed)
        b, rows_b = token_nll(model, padded)
    assert torch.equal(rows_a, rows_b)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert packs(model, tokens, idx, CPU, 64)
    # A model that would let packed records see each other is caught, and trains padded.
    blind = _NoPositions(factory.fresh())
    assert not packs(blind, tokens, idx, CPU, 64)


def test_packed_rows_train_the_same_model(setup):
    _, _, tokens, factory = setup
    subset = np.arange(0, 40, 2)
    trained = []
    for pack in (True, False):
        cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=8, max_length=64, pack_records=pack)
        model = factory.fresh().double()
        train_member(model, tokens, subset, cfg, seed=3, device=CPU)
        if pack:
            assert _PACKS[model]  # it did train on packed rows
        trained.append({k: v.detach().clone() for k, v in model.named_parameters()})
    start = dict(factory.fresh().double().named_parameters())
    for name, p in trained[0].items():
        assert not torch.equal(p, start[name].detach())  # both trained
        torch.testing.assert_close(p, trained[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_rows_stay_within_the_models_positions(setup):
    """--max-length beyond the model's 64 positions: rows stay 64 wide (its causal-mask buffer
    and position table are that size), and the member trains."""
    records, tok, _, factory = setup
    tokens = tokenize_records(records, tok, 128, "full", "demo")
    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=16, max_length=128)
    model = factory.fresh()
    stats = train_member(model, tokens, np.arange(40), cfg, seed=0, device=CPU)
    assert _PACKS[model] and np.isfinite(stats.final_loss)
    assert model.config.max_position_embeddings == 64
