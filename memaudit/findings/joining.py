"""Join near-duplicate fragments on pooled evidence: a conditional randomization test.

At small M a group of k near-duplicates comes back in fragments: one copy barely changes a
mate's loss while the other copies are in, so each pairwise link rests on the few models where
no other copy is. The evidence that two fragments A and B belong together is in all their
members at once: a member a of A, in the models that leave a out, has a loss that falls with
the number of copies included (measured on the strong demo: 6.84 nats with no mate in, then
2.64, 1.82, 1.50, 1.32 with 1 to 4; within-record sd 0.1-0.4). So, among the models that leave
a out and include the same number of a's own fragment, the models with more members of B in
should give a lower loss. The statistic is Kendall's concordance between a's loss and B's count
within those strata, summed over the members of A (both directions are tested, A from B and B
from A).

Calibration needs no model of the losses. The inclusion design draws every record's inclusion
independently of everything else (iid halves, or complementary pairs of models), so under the
null "A's losses do not depend on which models include B", B's inclusion is independent of A's
losses and A's own inclusion: redrawing B's inclusion from the design gives the statistic's
exact null distribution (a conditional randomization test; Candes et al. 2018). The p-value is
the Monte Carlo one, (1 + exceedances) / (1 + draws), valid at any number of draws.

Which merges are tested: only fragments (near-duplicate clusters, and records the per-record
verdict flags as having near-duplicates) that look alike (some pair of members at the modality's
similarity threshold). Similarity chooses the hypotheses; it never decides one: a merge needs
the influence evidence. Choosing by similarity, which the losses do not enter, keeps each test
exact. A pair of fragments passes at 2 min(p(A from B), p(B from A)) <= its bar. Two stages share
the family-wise level alpha:
- alpha / 2: each look-alike set (a connected component of look-alike fragments, up to
  WHOLE_MAX of them) is joined whole when every split of it into two sides passes at
  alpha / 2 / (the number of sets): an intersection-union test of "the set is two parts that do
  not influence each other", so its splits need no correction among themselves. A group of 5
  copies that came back as 5 lone records has no strong pair, but every split has evidence.
- alpha / 2: then round r = 1, 2, ... tests every look-alike pair of the current fragments at
  alpha / 2^(r + 1) / (its number of candidates) and merges the significant pairs (round 1
  leaves pairs of two lone records out: the weakest evidence, tested once fragments have grown).
So the chance of any false merge is at most alpha (Bonferroni within a stage or round, alpha / 2
and alpha / 2^(r + 1) across them). A false merge of two unrelated groups is worse than a
fragment: the level is family-wise, not a false-discovery rate. Measured: on the strong demo at
32 models pair recall 0.175 -> 0.745 (13 of 20 groups whole, all clusters pure); on synthetic
saturating groups at 32 models, whole groups of 2-6 copies 18, 20, 20, 20, 16 of 20; two real
groups that look alike to each other were joined falsely in 1 of 20 runs
(tests/findings/test_joining.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Monte Carlo draws per test: enough that a p-value at the bar is resolved (DRAWS_PER_BAR / bar),
# within [MIN_DRAWS, MAX_DRAWS]; drawn in batches, stopping once the bar is out of reach (the
# decision is then the one all the draws would give).
DRAWS_PER_BAR = 20
MIN_DRAWS = 2_000
MAX_DRAWS = 400_000
BATCH = 2_000
# Kendall pairs per member at most (a random subset, fixed before the test, for large M).
MAX_PAIRS = 4_000
ROUNDS = 6
JOIN_METHOD = (
    "conditional randomization test of look-alike fragments (Kendall concordance of each "
    "member's loss with the other side's inclusion count, both directions); whole look-alike "
    "sets first (every split must pass), then pairs round by round"
)
# Look-alike sets of at most this many fragments are first tested whole (2^(k-1) - 1 splits).
WHOLE_MAX = 8


@dataclass
class Join:
    """One merge: the fragments joined, the test's p-value (the largest over the splits, for
    a whole look-alike set) and the bar it passed; round 0 is the whole-set stage."""

    parts: list[list[int]]
    p_value: float
    bar: float
    round: int

    def to_json(self) -> dict:
        return {"parts": self.parts, "p_value": self.p_value, "bar": self.bar, "round": self.round}


@dataclass
class Joined:
    """What :func:`join_fragments` found: the fragments after joining, and why."""

    groups: list[np.ndarray]  # record sets of two or more, the joined clusters
    joins: list[Join] = field(default_factory=list)
    tested: int = 0  # candidate pairs tested over all rounds
    skipped: str | None = None  # why nothing was tested, when so


def _strata_pairs(
    losses: np.ndarray, inc: np.ndarray, members: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Kendall pairs (model i, model j, sign(L[a, i] - L[a, j])) of each member a of
    ``members``: pairs of models that leave a out and include the same number of a's mates."""
    rows_i, rows_j, signs = [], [], []
    for a in members:
        out = np.flatnonzero(~inc[a])
        mates = members[members != a]
        own = inc[mates][:, out].sum(axis=0) if len(mates) else np.zeros(len(out), dtype=int)
        ii, jj = np.triu_indices(len(out), 1)
        keep = own[ii] == own[jj]
        ii, jj = ii[keep], jj[keep]
        if len(ii) > MAX_PAIRS:
            pick = rng.choice(len(ii), MAX_PAIRS, replace=False)
            ii, jj = ii[pick], jj[pick]
        y = losses[a, out]
        s = np.sign(y[ii] - y[jj])
        rows_i.append(out[ii])
        rows_j.append(out[jj])
        signs.append(s)
    return np.concatenate(rows_i), np.concatenate(rows_j), np.concatenate(signs).astype(np.float32)


def draw_counts(
    size: int, n_models: int, used: np.ndarray, design: str, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """(draws, used models) counts of ``size`` records included, each record drawn from the
    design: iid halves, or complementary pairs (model 2k + 1 holds what model 2k leaves out)."""
    if design == "complementary":
        half = rng.binomial(size, 0.5, size=(draws, (n_models + 1) // 2))
        full = np.empty((draws, 2 * half.shape[1]), dtype=np.int64)
        full[:, 0::2], full[:, 1::2] = half, size - half
        full = full[:, :n_models]
    else:
        full = rng.binomial(size, 0.5, size=(draws, n_models))
    return full[:, used].astype(np.float32)


def crt_pvalue(
    losses: np.ndarray,
    inc: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    bar: float,
    rng: np.random.Generator,
    design: str = "bernoulli",
    used: np.ndarray | None = None,
    n_models: int | None = None,
) -> float:
    """Monte Carlo p-value that A's losses fall with B's inclusion (see the module docstring).
    ``losses`` and ``inc`` hold the used models only; ``used`` marks them among the ``n_models``
    of the design (for complementary pairs). The draws stop early once the p-value must end
    above ``bar``."""
    m = inc.shape[1]
    used = np.ones(m, dtype=bool) if used is None else used
    n_models = m if n_models is None else n_models
    ii, jj, signs = _strata_pairs(losses, inc, a, rng)
    if not len(signs) or not signs.any():
        return 1.0
    count = inc[b].sum(axis=0).astype(np.float32)
    # Concordance: more of B in <-> lower loss counts positive.
    observed = float(signs @ np.sign(count[jj] - count[ii]))
    total = int(np.clip(np.ceil(DRAWS_PER_BAR / bar), MIN_DRAWS, MAX_DRAWS))
    give_up = bar * (total + 1) - 1  # more exceedances than this: p > bar whatever follows
    hits = done = 0
    while done < total:
        k = min(BATCH, total - done)
        c = draw_counts(len(b), n_models, used, design, k, rng)
        hits += int((np.sign(c[:, jj] - c[:, ii]) @ signs >= observed - 1e-6).sum())
        done += k
        if hits > give_up:
            break
    return (1 + hits) / (1 + done)


def join_fragments(
    fragments: list[np.ndarray],
    flagged: np.ndarray,
    losses: np.ndarray,
    inclusion: np.ndarray,
    alike: Callable[[np.ndarray], np.ndarray],
    *,
    model_mask: np.ndarray | None = None,
    design: str = "bernoulli",
    fwer: float = 0.05,
    seed: int = 0,
    max_records: int = 5_000,
) -> Joined:
    """Join ``fragments`` (record sets; the near-duplicate clusters) and the ``flagged`` records
    outside them, round by round, where a pair that looks alike (``alike``: (K, 2) record pairs
    -> bool) passes the conditional randomization test (module docstring) at family-wise level
    ``fwer``. Returns the joined groups (two records or more) and each join's evidence."""
    n = inclusion.shape[0]
    used = np.ones(inclusion.shape[1], dtype=bool) if model_mask is None else model_mask
    inc = np.asarray(inclusion)[:, used].astype(bool)
    loss = np.asarray(losses, dtype=np.float64)[:, used]
    units = [np.sort(np.asarray(f, dtype=np.int64)) for f in fragments]
    inside = np.zeros(n, dtype=bool)
    for f in units:
        inside[f] = True
    units += [np.array([i]) for i in np.flatnonzero(np.asarray(flagged) & ~inside)]
    records = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
    out = Joined(groups=[u for u in units if len(u) >= 2])
    if fwer <= 0 or len(units) < 2:
        return out
    if len(records) > max_records:
        out.skipped = f"{len(records)} records to join, more than {max_records}"
        return out
    # Look-alike record pairs among them, once (similarity is the only thing that picks).
    a, b = np.triu_indices(len(records), 1)
    pairs = np.column_stack([records[a], records[b]])
    look = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), 500_000):
        look[start : start + 500_000] = alike(pairs[start : start + 500_000])
    near = pairs[look]
    rng = np.random.default_rng(seed)
    units = _whole_sets(units, near, loss, inc, fwer / 2, rng, design, used, out)
    level = fwer / 2
    for rnd in range(1, ROUNDS + 1):
        level /= 2
        cand = _unit_pairs(units, near, n)
        held_back = False
        if rnd == 1:
            # Two lone records are the weakest evidence; first grow the fragments (the pairs
            # of lone records are tested from round 2 on, whatever round 1 found).
            size = np.array([len(u) for u in units])
            grown = (size[cand[:, 0]] > 1) | (size[cand[:, 1]] > 1)
            held_back = not grown.all()
            cand = cand[grown]
        if not len(cand):
            if held_back:
                continue
            break
        bar = level / len(cand)
        out.tested += len(cand)
        passed = []
        for x, y in cand.tolist():
            p = _pair_p(loss, inc, units[x], units[y], bar, rng, design, used)
            if p <= bar:
                out.joins.append(Join([units[x].tolist(), units[y].tolist()], p, bar, rnd))
                passed.append((x, y))
        if not passed:
            if held_back:
                continue
            break
        labels = _labels(np.array(passed), len(units))
        units = [
            np.sort(np.concatenate([units[k] for k in np.flatnonzero(labels == c)]))
            for c in np.unique(labels)
        ]
    out.groups = [u for u in units if len(u) >= 2]
    return out


def _unit_pairs(units: list[np.ndarray], near: np.ndarray, n: int) -> np.ndarray:
    """(K, 2) distinct pairs x < y of units with a look-alike record pair (``near``) between
    them."""
    unit_of = np.full(n, -1, dtype=np.int64)
    for k, u in enumerate(units):
        unit_of[u] = k
    if not len(near):
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(np.sort(unit_of[near], axis=1), axis=0)
    return pairs[pairs[:, 0] != pairs[:, 1]]


def _labels(edges: np.ndarray, k: int) -> np.ndarray:
    """Connected-component label of each of k nodes joined by ``edges`` (labels follow the
    nodes' order)."""
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(k, k))
    return connected_components(graph, directed=False)[1]


def _pair_p(
    loss: np.ndarray,
    inc: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    bar: float,
    rng: np.random.Generator,
    design: str,
    used: np.ndarray,
) -> float:
    """The pair test's p-value: both directions, 2 min(p(A from B), p(B from A)), at most 1."""
    p_ab = crt_pvalue(loss, inc, a, b, bar / 2, rng, design, used, len(used))
    p_ba = crt_pvalue(loss, inc, b, a, bar / 2, rng, design, used, len(used))
    return min(2 * min(p_ab, p_ba), 1.0)


def _whole_sets(
    units: list[np.ndarray],
    near: np.ndarray,
    loss: np.ndarray,
    inc: np.ndarray,
    level: float,
    rng: np.random.Generator,
    design: str,
    used: np.ndarray,
    out: Joined,
) -> list[np.ndarray]:
    """Join each look-alike set of fragments (a connected component of the look-alike pairs,
    2 to WHOLE_MAX fragments) whole when every split of it into two sides passes the pair test
    at level / (the number of such sets): an intersection-union test of "the set is made of
    two parts that do not influence each other", so the splits need no correction among
    themselves. A group of 5 copies that came back as 5 lone records has no strong pair, but
    every split of it has pooled evidence on both sides."""
    edges = _unit_pairs(units, near, inc.shape[0])
    if not len(edges):
        return units
    labels = _labels(edges, len(units))
    sets = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sets = [c for c in sets if 2 <= len(c) <= WHOLE_MAX]
    if not sets:
        return units
    bar = level / len(sets)
    out.tested += len(sets)
    merged = set()
    for c in sets:
        worst = 0.0
        for r in range(1, 2 ** (len(c) - 1)):
            side = np.array([(r >> k) & 1 for k in range(len(c))], dtype=bool)
            ua = np.concatenate([units[k] for k in c[side]])
            ub = np.concatenate([units[k] for k in c[~side]])
            p = _pair_p(loss, inc, ua, ub, bar, rng, design, used)
            worst = max(worst, p)
            if p > bar:
                break
        if worst <= bar:
            out.joins.append(Join([units[k].tolist() for k in c], worst, bar, 0))
            merged.update(c.tolist())
    whole = [np.sort(np.concatenate([units[k] for k in c])) for c in sets if c[0] in merged]
    return whole + [u for k, u in enumerate(units) if k not in merged]
