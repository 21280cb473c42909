"""The headline verdict on signal strength (#19)."""

from __future__ import annotations

import numpy as np

from memaudit.estimate.influence import estimate
from memaudit.findings.verdict import pair_threshold, signal_verdict


def _run(seed: int, n: int, m: int, effect: float, noise: float):
    rng = np.random.default_rng(seed)
    inclusion = rng.random((n, m)) < 0.5
    losses = 3.0 + rng.normal(0.0, noise, size=(n, m)) - effect * inclusion
    return estimate(losses, inclusion, top_k=3)


def test_weak_signal_says_clusters_cannot_be_resolved_and_what_would():
    # Self-influence 0.001 nats at noise 0.0008: significant (z ~ 3.5), but a copy's
    # smaller effect on its mate is below what a pair needs at z 4.5.
    res = _run(0, 200, 32, 0.001, 0.0008)
    v = signal_verdict(res, 32, pair_threshold(6.6, 6.4), n_clusters=0, level=0.05)
    assert v["strength"] == "weak" and not v["clusters_resolvable"]
    assert 0.5 < v["share_significant"] <= 1.0
    assert abs(v["median_self_influence"] - 0.001) < 0.0003
    assert v["models_to_resolve"] > 32
    text = " ".join(v["text"])
    assert "cannot be resolved" in text and "not evidence of no duplication" in text
    assert "0.001" in text and "nats" in text  # the effect with its scale, not 0.00
    # More models shrink the standard errors: at the suggested M the same effect resolves.
    more = _run(1, 200, int(1.3 * v["models_to_resolve"]), 0.001, 0.0008)
    again = signal_verdict(more, more.n_models, pair_threshold(6.6, 6.4), 0, 0.05)
    assert again["clusters_resolvable"]


def test_strong_signal_is_resolvable_and_no_signal_is_none():
    strong = signal_verdict(_run(2, 100, 32, 3.0, 0.5), 32, 6.6, 5, 0.05)
    assert strong["strength"] == "strong" and strong["clusters_resolvable"]
    assert strong["models_to_resolve"] is None
    none = signal_verdict(_run(3, 100, 32, 0.0, 0.5), 32, 6.6, 0, 0.05)
    assert none["strength"] == "none" and none["share_significant"] < 0.05


def test_pair_threshold_takes_the_easier_rule():
    assert pair_threshold(6.0, None) == 6.0
    assert pair_threshold(6.0, float("-inf")) == 6.0
    assert abs(pair_threshold(6.0, 4.0 * np.sqrt(2)) - 4.0) < 1e-12
