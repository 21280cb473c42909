"""Link rules calibrated on null shuffles (#19): the shuffle keeps each record's own effect,
the calibrated rules keep their false-link rate under the stated level on null ensembles of
several shapes, and still find saturating near-duplicate groups."""

from __future__ import annotations

import numpy as np
import pytest

from memaudit.config import FindingsConfig
from memaudit.estimate.adjusted import estimate_adjusted
from memaudit.estimate.influence import estimate
from memaudit.findings.calibration import (
    SHUFFLE_COST,
    NullTail,
    calibrate_links,
    fdr_threshold,
    null_losses,
    null_plan,
    null_threshold,
)
from memaudit.findings.clusters import find_clusters, find_links
from memaudit.findings.ground_truth import score_against_groups
from tests.findings.test_clusters import _saturating


def _null(seed: int, n: int, m: int, effect: tuple[float, float], noise: float):
    """No cross-record effect: each record's loss drops by its own effect when it is in."""
    rng = np.random.default_rng(seed)
    inclusion = rng.random((n, m)) < 0.5
    drop = rng.uniform(*effect, size=(n, 1))
    losses = rng.normal(3.0, 0.3, size=(n, 1)) + rng.normal(0.0, noise, size=(n, m))
    losses -= drop * inclusion
    return losses, inclusion


def test_null_losses_shuffle_within_each_records_own_strata():
    losses, inclusion = _null(0, 30, 20, (0.5, 1.0), 0.3)
    used = np.ones(20, dtype=bool)
    used[[3, 7]] = False
    out = null_losses(losses, inclusion, np.random.default_rng(1), used)
    np.testing.assert_array_equal(out[:, ~used], losses[:, ~used])
    assert not np.allclose(out, losses)
    for t in range(30):
        for side in (True, False):
            cols = used & (inclusion[t] == side)
            np.testing.assert_allclose(np.sort(out[t, cols]), np.sort(losses[t, cols]))
    # Each record's self-influence (difference of means) is exactly kept.
    before = estimate(losses, inclusion, top_k=2, model_mask=used).self_influence
    after = estimate(out, inclusion, top_k=2, model_mask=used).self_influence
    np.testing.assert_allclose(after, before, atol=1e-12)


def test_null_threshold_lets_at_most_the_level_through():
    stats = np.array([5.0, 4.0, 3.0, 2.0, np.nan])
    # 20 shuffles at level 0.1: 2 null links allowed, the threshold is just above the third.
    thr = null_threshold(stats, 20, 0.1)
    assert 3.0 < thr < 3.0001 and (stats >= thr).sum() == 2
    assert null_threshold(stats, 10, 0.05) > 5.0  # none allowed: above the largest
    assert null_threshold(np.array([1.0]), 20, 0.1) is None  # fewer than allowed: no bar


# (records, models, self-effect range, noise): weak and strong memorization, small and larger M.
SHAPES = [(60, 24, (0.05, 0.3), 0.5), (100, 32, (3.0, 5.0), 0.5), (80, 48, (0.0, 1.0), 0.5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_calibrated_rules_hold_the_false_link_rate_on_null_ensembles(shape):
    n, m, effect, noise = shape
    # 19 shuffles at link_fwer 0.1: each rule's threshold is above its null maximum, so on a
    # null run each rule links falsely with chance <= 1 / 20 (exchangeability), <= 0.1 for both.
    cfg = FindingsConfig(link_fwer=0.1, link_null_ensembles=19)
    runs, false_runs, uncalibrated = 12, 0, 0
    for seed in range(runs):
        losses, inclusion = _null(100 + seed, n, m, effect, noise)
        res = estimate_adjusted(losses, inclusion, top_k=10)
        cal = calibrate_links(res, cfg, losses, inclusion, seed=seed)
        rows = find_links(
            res,
            cfg,
            losses,
            inclusion,
            z_threshold=cal.z_threshold,
            mutual_threshold=cal.mutual_threshold,
        )
        false_runs += len(rows) > 0
        uncalibrated += len(find_links(res, cfg, losses, inclusion)) > 0
    # Nominal <= 0.1 of 12 runs (1.2); 4 or more would have chance < 0.03 at the nominal rate.
    assert false_runs <= 3
    if effect[1] < 1.0:
        # The uncalibrated mutual rule links noise in most weak-signal runs (the #19 failure).
        assert uncalibrated >= runs // 2


def test_calibrated_mutual_rule_still_finds_saturating_groups():
    precision, found = [], []
    cfg = FindingsConfig(link_null_ensembles=19, link_fwer=0.1)
    for seed in range(7, 11):
        losses, inclusion, texts, groups = _saturating(seed=seed, m=32)
        res = estimate_adjusted(losses, inclusion, top_k=10)
        cal = calibrate_links(res, cfg, losses, inclusion)
        _, cluster_of = find_clusters(
            res,
            texts,
            cfg,
            losses=losses,
            inclusion=inclusion,
            z_threshold=cal.z_threshold,
            mutual_threshold=cal.mutual_threshold,
        )
        score = score_against_groups(cluster_of, groups)
        precision.append(1.0 if score["pair_precision"] is None else score["pair_precision"])
        found.append(score["share_found"])
    print("precision", precision, "found", found)
    assert min(precision) >= 0.95 and np.mean(found) >= 0.5


@pytest.mark.slow
def test_weak_memorization_run_flags_no_false_cluster(tmp_path, cli):
    """The #19 regime end to end: the tiny model at the paper's fine-tuning defaults (LoRA r 8,
    3 epochs, lr 2e-4) on 120 demo records (8 planted groups of 5), 16 models. Memorization is
    weak; before calibration the mutual rule listed chance clusters here (the 300-record,
    32-model run: 14 clusters, 6 pure). Now every cluster shown is pure or there is none, and
    the headline says whether clusters are resolvable, with the effect's scale."""
    import json

    import jsonschema

    from memaudit.report.build import load_schema
    from tests.conftest import DEMO_DATA, TINY_MODEL, write_jsonl

    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]
    unique = [r for r in rows if not r.get("group")][:80]
    groups = sorted({r["group"] for r in rows if r.get("group")})[:8]
    data = write_jsonl(
        tmp_path / "weak.jsonl", unique + [r for r in rows if r.get("group") in groups]
    )
    out = tmp_path / "run"
    res = cli(
        "run", data, "--model", TINY_MODEL, "--preset", "nq", "--models", "16",
        "--max-length", "64", "--extract-models", "0", "--out", out,
    )  # fmt: skip
    assert res.code == 0, res.err
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    gt = report["ground_truth"]
    assert gt["pair_precision"] is None or gt["pair_precision"] >= 0.95
    assert gt["clusters_pure"] == gt["clusters"]
    head = report["headline"]
    assert head["median_self_influence"] < 0.05  # weak: LoRA defaults on the tiny model
    assert "nats" in head["text"][0]
    assert report["link_calibration"]["replicates"] == 39
    # The terminal prints the headline first and the small effect with its digits.
    assert "Memorization measured" in res.out
    assert " 0.00 ± 0.00 " not in res.out


def test_fdr_threshold_drops_only_where_the_run_has_far_more_links_than_the_null():
    null = np.array([3.8, 3.0, 2.5, 2.0])  # 4 null links over 10 shuffles: 0.4 per run
    # Few real links: the family-wise threshold stays.
    assert fdr_threshold(np.array([3.5, 2.9]), null, 10, 0.025, 0.01, 3.81) == 3.81
    # 60 real links at 3.1: 0.1 expected false per run <= 0.005 * 60, so 3.1 is enough; at
    # 1.0 all 0.4 null links per run would count against 61 links: 0.4 > 0.005 * 61.
    many = np.r_[np.full(60, 3.1), [1.0]]
    assert fdr_threshold(many, null, 10, 0.025, 0.005, 3.81) == 3.1
    assert fdr_threshold(many, null, 10, 0.025, 0.01, 3.81) == 1.0


# -- the budgeted path: fewer whole shuffles and a fitted null tail ---------------------------


def test_null_plan_runs_every_shuffle_on_small_runs_and_caps_large_ones():
    cfg = FindingsConfig()  # 39 shuffles, budget 4 estimates
    assert null_plan(cfg, 300, 128) is None  # the demo: exact, whatever the budget
    assert null_plan(cfg, 1000, 1000) is None  # 3.9e10 <= EXACT_WORK
    assert null_plan(cfg, 20_000, 1000) == 2  # floor(4 / 1.5) whole shuffles
    assert null_plan(FindingsConfig(link_null_budget=None), 20_000, 1000) is None
    assert null_plan(FindingsConfig(link_null_budget=39 * SHUFFLE_COST), 20_000, 1000) is None
    assert null_plan(FindingsConfig(link_null_budget=1.5), 20_000, 1000) == 1
    assert null_plan(cfg, 300, 128, exact_work=0) == 2


def test_budget_setting_is_checked_like_every_other():
    from memaudit.config import OptionError

    with pytest.raises(OptionError, match="link.null.budget"):
        FindingsConfig(link_null_budget=SHUFFLE_COST / 2)  # less than one shuffle
    assert FindingsConfig(link_null_budget=None).link_null_budget is None


def test_exact_path_thresholds_are_unchanged():
    """Bit-identical to the thresholds without the budget (printed by calibrate_links before
    the budget existed, then re-printed once when the z rule's statistic became the pair's
    pooled z in 450a552: the mutual thresholds did not move, the z ones did)."""
    cfg = FindingsConfig(link_null_ensembles=19, link_fwer=0.1)
    losses, inclusion = _null(100, 60, 24, (0.05, 0.3), 0.5)
    cal = calibrate_links(estimate_adjusted(losses, inclusion, top_k=10), cfg, losses, inclusion)
    assert cal.to_json()["approximation"] is None and cal.replicates == 19
    assert (cal.z_threshold, cal.mutual_threshold) == (6.510303712583929, 4.683852166991938)
    losses, inclusion, _, _ = _saturating(seed=7, m=32)
    res = estimate_adjusted(losses, inclusion, top_k=10)
    cal = calibrate_links(res, FindingsConfig(), losses, inclusion)
    assert (cal.z_threshold, cal.mutual_threshold) == (5.312532966226077, 3.6443973708864172)


def test_null_tail_extrapolates_a_known_tail():
    """20,000 exponential null stats over 2 shuffles: E0(s) = 10,000 exp(-s) per run, so
    level 0.025 needs s = ln(400,000) = 12.9, 3 units beyond the sample's largest (~9.9)."""
    rng = np.random.default_rng(0)
    stats = rng.exponential(1.0, 20_000)
    tail = NullTail.fit(stats, shuffles=2)
    assert tail.exceedances == 250 and tail.shape >= 0
    assert abs(tail.threshold(0.025) - np.log(400_000)) < 0.6
    assert tail.threshold(0.025) > stats.max()
    # Within the data E0 is the count per shuffle; far inside it the exact rule applies.
    assert tail.expected(1.0) == (stats >= 1.0).sum() / 2
    assert tail.threshold(200.0) == null_threshold(stats, 2, 200.0)
    # Gaussian stats (a lighter tail): the fitted shape is clamped at 0 (exponential), which
    # puts the threshold above the true one (conservative), not below.
    normal = NullTail.fit(rng.normal(size=20_000), shuffles=2)
    assert normal.shape == 0.0 and normal.shape_fitted < 0
    from scipy.stats import norm

    assert normal.threshold(0.025) >= norm.isf(0.025 / 10_000)
    assert NullTail.fit(np.array([1.0, 2.0, np.nan]), 2).threshold(0.025) is None  # no tail


def test_fdr_threshold_reads_a_fitted_tail_where_given():
    null = np.array([3.8, 3.0, 2.5, 2.0])
    many = np.r_[np.full(60, 3.1), [1.0]]

    def counts(s):
        return (null[None, :] >= np.asarray(s)[:, None]).sum(axis=1) / 10

    assert fdr_threshold(many, null, 10, 0.025, 0.005, 3.81, expected=counts) == 3.1
    assert fdr_threshold(many, null, 10, 0.025, 0.01, 3.81, expected=counts) == 1.0


def _tail_run(losses, inclusion, cfg, seed=0):
    """The budgeted path forced at test size (exact_work=0): 2 shuffles at the default budget."""
    res = estimate_adjusted(losses, inclusion, top_k=10)
    cal = calibrate_links(res, cfg, losses, inclusion, seed=seed, exact_work=0)
    assert cal.replicates == 2 and cal.to_json()["approximation"]["shuffles"] == 2
    return res, cal


# (records, models, self-effect range, seeds): weak memorization at M = 32 and a mixed regime
# at M = 48, N = 1,500 (the tail path forced by exact_work=0).
TAIL_SHAPES = [(1500, 32, (0.05, 0.3)), (1500, 48, (0.0, 1.0))]


def _false_runs(shape, seeds):
    n, m, effect = shape
    cfg = FindingsConfig(link_fwer=0.1)
    false_runs = 0
    for seed in range(seeds):
        losses, inclusion = _null(1000 + seed, n, m, effect, 0.5)
        res, cal = _tail_run(losses, inclusion, cfg, seed)
        rows = find_links(
            res,
            cfg,
            losses,
            inclusion,
            z_threshold=cal.z_threshold,
            mutual_threshold=cal.mutual_threshold,
        )
        false_runs += len(rows) > 0
    return false_runs


def test_tail_path_holds_the_false_link_rate_on_null_ensembles_quick():
    # 4 null runs of the weak shape at link_fwer 0.1: 2 or more false runs would have chance
    # 0.05 at the nominal rate (the 40-seed version below is the measurement).
    assert _false_runs(TAIL_SHAPES[0], 4) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("shape", TAIL_SHAPES)
def test_tail_path_holds_the_false_link_rate_on_null_ensembles(shape):
    # 40 null runs at link_fwer 0.1 (nominal: at most 4 runs with any false link); 9 or more
    # would have chance 0.016 at the nominal rate. Measured: 3 of 40 runs in each shape (weak:
    # 4 false link rows; mixed: 6), a family-wise rate of 0.075 (95% interval 0.016-0.20).
    assert _false_runs(shape, 40) <= 8


def test_tail_path_still_finds_strong_planted_pairs():
    cfg = FindingsConfig(link_fwer=0.1)
    for seed in range(2):
        losses, inclusion, texts, groups = _saturating(
            seed=seed, m=64, n_unique=1500, n_groups=10, size=2
        )
        res, cal = _tail_run(losses, inclusion, cfg)
        _, cluster_of = find_clusters(
            res,
            texts,
            cfg,
            losses=losses,
            inclusion=inclusion,
            z_threshold=cal.z_threshold,
            mutual_threshold=cal.mutual_threshold,
        )
        score = score_against_groups(cluster_of, groups)
        assert score["pair_precision"] == 1.0 and score["share_found"] >= 0.8


def test_tail_path_json_says_how_and_fits_the_schema():
    import jsonschema

    from memaudit.report.build import load_schema

    losses, inclusion = _null(3, 400, 32, (0.05, 0.3), 0.5)
    _, cal = _tail_run(losses, inclusion, FindingsConfig())
    out = cal.to_json()
    approx = out["approximation"]
    assert approx["row_fraction"] == 1.0 and approx["requested_shuffles"] == 39
    assert approx["work_estimates"] == 2 * SHUFFLE_COST <= approx["budget_estimates"]
    assert set(approx["tails"]) == {"z", "mutual"}
    assert approx["tails"]["z"]["exceedances"] > 0 and "generalized Pareto" in out["method"]
    schema = load_schema()
    sub = dict(schema["properties"]["link_calibration"], **{"$defs": schema["$defs"]})
    jsonschema.validate(out, sub)
