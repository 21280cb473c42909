"""One member's loss on every record: the mean next-token NLL over each record's scored
positions, the same whatever the batching (checked against one record at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memaudit.data.tokens import tokenize_records
from memaudit.ensemble.evaluate import record_losses
from tests.conftest import tiny_setup

CPU = torch.device("cpu")


def _one_by_one(model, tokens) -> np.ndarray:
    out = []
    with torch.no_grad():
        for ids, start in zip(tokens.ids, tokens.score_from, strict=True):
            x = torch.from_numpy(np.asarray(ids))[None]
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)
            nll = -logp[torch.arange(len(ids) - 1), x[0, 1:]]  # token k predicted at k - 1
            out.append(float(nll[start - 1 :].mean()))
    return np.array(out)


@pytest.fixture(scope="module")
def setup():
    records, tok, tokens, factory = tiny_setup(12)
    return records, tok, tokens, factory.fresh()


@pytest.mark.parametrize("loss_on", ["full", "completion"])
def test_record_losses_equal_one_record_at_a_time(setup, loss_on):
    records, tok, _, model = setup
    tokens = tokenize_records(records, tok, 64, loss_on, "demo")
    if loss_on == "completion":
        assert (tokens.score_from > 1).all()  # the prompt is not scored
    expected = _one_by_one(model, tokens)
    for batch_size in (1, 5, 64):
        got = record_losses(model, tokens, batch_size, CPU)
        assert got.dtype == np.float64 and got.shape == (len(records),)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert model.training  # evaluation leaves the model's mode as it was
