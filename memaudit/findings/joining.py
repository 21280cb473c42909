"""Join near-duplicate fragments on pooled evidence: a conditional randomization test.

At small M a group of k near-duplicates comes back in fragments: one copy barely changes a
mate's loss while the other copies are in, so each pairwise link rests on the few models where
no other copy is. The evidence that two fragments A and B belong together is in all their
members at once: a member a of A has a loss that falls with the number of copies included,
whether a itself is out (strong demo: 6.84 nats with no mate in, then 2.64, 1.82, 1.50, 1.32
with 1 to 4; within-record sd 0.1-0.4) or in (about 1.2, 0.9, 0.75, 0.65, 0.55; on held-out NQ
and SMS the two sides carry about the same evidence). So, among the models that treat a alike
(a in, or a out) and include the same number of a's own fragment, the models with more members
of B in should give a lower loss. The statistic is Kendall's concordance between a's loss and
B's count within those strata, summed over the members of A (both directions are tested, A
from B and B from A).

Calibration needs no model of the losses. The inclusion design draws every record's inclusion
independently of everything else (iid halves, or complementary pairs of models), so under the
null "A's losses do not depend on which models include B", B's inclusion is independent of A's
losses and A's own inclusion: redrawing B's inclusion from the design gives the statistic's
exact null distribution (a conditional randomization test; Candes et al. 2018). The p-value is
the Monte Carlo one, (1 + exceedances) / (1 + draws), valid at any number of draws; the number
of draws is fixed before the first (from the strictest bar the test can meet), and draws stop
once the answer at the bar asked is sure, going on with the same draws if a larger bar is asked
later.

Which merges are tested: only fragments (near-duplicate clusters, records the per-record verdict
flags as having near-duplicates, and unflagged records that look alike to one of those: a copy
the verdict missed) that look alike (some pair of members at the modality's similarity
threshold). Similarity chooses the hypotheses; it never decides one: a merge needs the influence
evidence. Choosing by similarity, which the losses do not enter, keeps each test exact. A pair of
fragments passes at 2 min(p(A from B), p(B from A)) <= its bar, with an effect the size of a
copy's in the direction that passes (Kendall's tau >= MIN_TAU: records on one topic influence
each other significantly but weakly; a smaller rejection region keeps the test valid). Two
stages share the family-wise level alpha:
- alpha / 2: each look-alike set (a connected component of look-alike fragments, up to
  WHOLE_MAX of them) is joined whole when every split of it into two sides passes: an
  intersection-union test of "the set is two parts that do not influence each other", so its
  splits need no correction among themselves; Holm's step-down over the sets. A group of 5
  copies that came back as 5 lone records has no strong pair, but every split has evidence.
- alpha / 2: then round r = 1, 2, ... tests every look-alike pair of the current fragments by
  Holm's procedure at alpha / 2^(r + 1) and merges the significant pairs (round 1 leaves pairs
  of two lone records out: the weakest evidence, tested once fragments have grown).
So the chance of any false merge is at most alpha (Holm within a stage or round, alpha / 2 and
alpha / 2^(r + 1) across them). A false merge of two unrelated groups is worse than a fragment:
the level is family-wise, not a false-discovery rate. Measured on the strong demo at 32 models:
pair recall 0.745 with the out-models, Bonferroni and flagged records only; 0.965 with both
sides and Holm (19 of 20 groups whole); 1.00 with unflagged look-alikes too (20 of 20 whole,
all clusters pure). Synthetic tests in tests/findings/test_joining.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from memaudit.findings.similarity import alike_pairs

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
    "member's loss with the other side's inclusion count, among models alike in the member's "
    "own inclusion and own-fragment count; both directions); whole look-alike sets first "
    "(every split must pass), then pairs round by round; Holm within each"
)
# A join needs, besides significance, a Kendall tau of at least this between a side's losses and
# the other side's count (the effect's size). Measured, halves of a planted group: tau 0.49-1.0
# at 32-64 models on strong held-out NQ (5% quantile 0.6), 5% quantile 0.30 on weak NQ; two
# alternative-answer groups sharing an answer ("who did the vikings lose to in the super bowl" /
# "who did the 49ers beat in the super bowls", both "Miami Dolphins"): 0.04 and 0.18.
MIN_TAU = 0.25
# Look-alike sets of at most this many fragments are first tested whole (2^(k-1) - 1 splits).
WHOLE_MAX = 8


@dataclass
class Join:
    """One merge: the fragments joined, the test's p-value (the largest over the splits, for
    a whole look-alike set) and the bar it passed (Holm's, at the step it passed); round 0 is
    the whole-set stage."""

    parts: list[list[int]]
    p_value: float
    bar: float
    round: int
    tau: float = float("nan")  # the effect's size (smallest over the splits of a set)

    def to_json(self) -> dict:
        return {
            "parts": self.parts,
            "p_value": self.p_value,
            "bar": self.bar,
            "round": self.round,
            "tau": self.tau,
        }


@dataclass
class Joined:
    """What :func:`join_fragments` found: the fragments after joining, and why."""

    groups: list[np.ndarray]  # record sets of two or more, the joined clusters
    joins: list[Join] = field(default_factory=list)
    tested: int = 0  # candidate pairs tested over all rounds
    skipped: str | None = None  # why nothing was tested, when so
    # Records without evidence of their own added as look-alikes of a candidate; None: not
    # searched (more than max_pairs record pairs to compare).
    neighbours: int | None = None


def _strata_pairs(
    losses: np.ndarray, inc: np.ndarray, members: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Kendall pairs (model i, model j, sign(L[a, i] - L[a, j])) of each member a of
    ``members``: pairs of models that treat a alike (both leave a out, or both include it) and
    include the same number of a's mates. Models that include a count too: a copy's loss falls
    with its mates in either way (strong demo, a copy in: about 1.2, 0.9, 0.75, 0.65, 0.55 nats
    with 0 to 4 mates in), and they double the evidence."""
    rows_i, rows_j, signs = [], [], []
    for a in members:
        mates = members[members != a]
        for side in (False, True):
            models = np.flatnonzero(inc[a] == side)
            own = inc[mates][:, models].sum(axis=0) if len(mates) else np.zeros(len(models))
            ii, jj = np.triu_indices(len(models), 1)
            keep = own[ii] == own[jj]
            ii, jj = ii[keep], jj[keep]
            if len(ii) > MAX_PAIRS:
                pick = rng.choice(len(ii), MAX_PAIRS, replace=False)
                ii, jj = ii[pick], jj[pick]
            y = losses[a, models]
            rows_i.append(models[ii])
            rows_j.append(models[jj])
            signs.append(np.sign(y[ii] - y[jj]))
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


def _draws_for(bar: float) -> int:
    """Monte Carlo draws that resolve a p-value at ``bar`` (fixed before any draw)."""
    return int(np.clip(np.ceil(DRAWS_PER_BAR / bar), MIN_DRAWS, MAX_DRAWS))


class CrtDirection:
    """The Monte Carlo p-value that A's losses fall with B's inclusion (module docstring),
    computed lazily: ``at_most(bar)`` draws only until the answer is known, and a later question
    at a larger bar goes on with the same draws. The number of draws is fixed up front (from the
    strictest bar the test will meet), so the p-value, (1 + exceedances) / (1 + draws), does not
    depend on the questions asked. ``losses`` and ``inc`` hold the used models only; ``used``
    marks them among the ``n_models`` of the design (for complementary pairs)."""

    def __init__(
        self,
        losses: np.ndarray,
        inc: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        draws: int,
        rng: np.random.Generator,
        design: str = "bernoulli",
        used: np.ndarray | None = None,
        n_models: int | None = None,
    ):
        m = inc.shape[1]
        self.used = np.ones(m, dtype=bool) if used is None else used
        self.n_models = m if n_models is None else n_models
        self.ii, self.jj, self.signs = _strata_pairs(losses, inc, a, rng)
        self.size, self.design, self.rng = len(b), design, rng
        self.total, self.hits, self.done = draws, 0, 0
        self.empty = not len(self.signs) or not self.signs.any()
        self.tau = 0.0
        if not self.empty:
            count = inc[b].sum(axis=0).astype(np.float32)
            # Concordance: more of B in <-> lower loss counts positive.
            diff = np.sign(count[self.jj] - count[self.ii])
            self.observed = float(self.signs @ diff)
            # Kendall's tau over the pairs that order both: the effect's size, not its evidence.
            self.tau = self.observed / max(float(np.abs(self.signs * diff).sum()), 1.0)

    @property
    def complete(self) -> bool:
        return self.empty or self.done >= self.total

    @property
    def p_value(self) -> float:
        """The p-value: exact once ``complete``, else the share of the draws made so far."""
        return 1.0 if self.empty else (1 + self.hits) / (1 + self.done)

    def at_most(self, bar: float) -> bool:
        if self.empty:
            return False
        give_up = bar * (self.total + 1) - 1  # more exceedances than this: p > bar
        while self.done < self.total and self.hits <= give_up:
            k = min(BATCH, self.total - self.done)
            c = draw_counts(self.size, self.n_models, self.used, self.design, k, self.rng)
            diff = np.sign(c[:, self.jj] - c[:, self.ii])
            self.hits += int((diff @ self.signs >= self.observed - 1e-6).sum())
            self.done += k
        return self.hits <= give_up


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
    """Monte Carlo p-value that A's losses fall with B's inclusion, resolved at ``bar``: exact
    when it is at most ``bar``, else a lower bound above it (the draws stop once that is sure)."""
    test = CrtDirection(losses, inc, a, b, _draws_for(bar), rng, design, used, n_models)
    test.at_most(bar)
    return test.p_value


@dataclass(frozen=True)
class _Data:
    """What every test reads: the used models' losses and inclusion, how inclusion was drawn
    (``design``) and which of the design's models are used."""

    loss: np.ndarray
    inc: np.ndarray
    design: str
    used: np.ndarray


class _PairTest:
    """Two fragments belong together: 2 min(p(A from B), p(B from A)) at most the bar, each
    direction a lazy :class:`CrtDirection` with its own random stream (``seed``); its draws
    resolve the ``strictest`` bar it can be asked."""

    def __init__(self, data: _Data, a, b, strictest: float, seed: list[int]):
        draws = _draws_for(strictest / 2)
        streams = [np.random.default_rng([*seed, k]) for k in (0, 1)]
        self.directions = [
            CrtDirection(
                data.loss, data.inc, x, y, draws, rng, data.design, data.used, len(data.used)
            )
            for (x, y), rng in zip(((a, b), (b, a)), streams, strict=True)
        ]

    def at_most(self, bar: float) -> bool:
        """Significant at ``bar``, with an effect the size of a copy's (MIN_TAU) in the
        direction that is: related records that are not copies (one answer shared by two
        questions) influence each other measurably but weakly, and are not joined."""
        return any(d.tau >= MIN_TAU and d.at_most(bar / 2) for d in self.directions)

    @property
    def p_value(self) -> float:
        """2 min over the directions whose p-value is exact (the one that decided a pass)."""
        done = [d.p_value for d in self.directions if d.complete]
        return min(2 * min(done), 1.0) if done else 1.0

    @property
    def tau(self) -> float:
        return max(d.tau for d in self.directions)


class _SetTest:
    """A look-alike set of fragments is one group: every split of it into two sides passes the
    pair test (an intersection-union test); splits are built when first needed."""

    def __init__(self, data: _Data, parts: list[np.ndarray], strictest: float, seed: list[int]):
        self.data, self.parts, self.strictest, self.seed = data, parts, strictest, seed
        self.splits: dict[int, _PairTest] = {}

    def _split(self, r: int) -> _PairTest:
        if r not in self.splits:
            side = np.array([(r >> k) & 1 for k in range(len(self.parts))], dtype=bool)
            a = np.concatenate([p for p, s in zip(self.parts, side, strict=True) if s])
            b = np.concatenate([p for p, s in zip(self.parts, side, strict=True) if not s])
            self.splits[r] = _PairTest(self.data, a, b, self.strictest, [*self.seed, r])
        return self.splits[r]

    def at_most(self, bar: float) -> bool:
        return all(self._split(r).at_most(bar) for r in range(1, 2 ** (len(self.parts) - 1)))

    @property
    def p_value(self) -> float:
        return max(t.p_value for t in self.splits.values())

    @property
    def tau(self) -> float:
        return min(t.tau for t in self.splits.values())


def _holm(tests: list, level: float) -> list[tuple[int, float]]:
    """Holm's step-down at family-wise ``level``: Bonferroni over the hypotheses not yet
    rejected, repeated until a pass rejects none (the same rejections as Holm's sorted
    p-values; each pass goes on with the draws of the last). Returns (test, bar) rejected."""
    left, rejected = list(range(len(tests))), []
    while left:
        bar = level / len(left)
        now = [k for k in left if tests[k].at_most(bar)]
        if not now:
            break
        rejected += [(k, bar) for k in now]
        left = sorted(set(left) - set(now))
    return rejected


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
    max_pairs: int = 12_500_000,
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
    if fwer <= 0 or not units:
        return out
    if len(records) > max_records:
        out.skipped = f"{len(records)} records to join, more than {max_records}"
        return out
    # Records without evidence of their own (not flagged, in no cluster) that look alike to a
    # candidate join the candidates as lone records, on the same test: a copy the per-record
    # verdict missed is still a copy, and similarity alone never joins it.
    rest = np.setdiff1d(np.arange(n), records)
    if len(records) * len(rest) <= max_pairs:
        # A block of candidates against all the rest at a time: the whole cross product (up to
        # max_pairs rows) is never held at once.
        step = max(1, 500_000 // max(len(rest), 1))
        found = [np.zeros(0, dtype=np.int64)]
        for part in (records[s : s + step] for s in range(0, len(records), step)):
            cross = np.column_stack([np.repeat(part, len(rest)), np.tile(rest, len(part))])
            found.append(alike_pairs(alike, cross)[:, 1])
        extra = np.unique(np.concatenate(found))
        units += [np.array([i]) for i in extra]
        records = np.concatenate([records, extra])
        out.neighbours = len(extra)
    if len(units) < 2:
        return out
    # Look-alike record pairs among them, once (similarity is the only thing that picks).
    a, b = np.triu_indices(len(records), 1)
    near = alike_pairs(alike, np.column_stack([records[a], records[b]]))
    data = _Data(loss, inc, design, used)
    units = _whole_sets(units, near, fwer / 2, [seed], data, out)
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
        out.tested += len(cand)
        tests = [
            _PairTest(data, units[x], units[y], level / len(cand), [seed, rnd, k])
            for k, (x, y) in enumerate(cand.tolist())
        ]
        passed = _holm(tests, level)
        for k, bar in passed:
            x, y = cand[k]
            parts = [units[x].tolist(), units[y].tolist()]
            out.joins.append(Join(parts, tests[k].p_value, bar, rnd, tests[k].tau))
        if not passed:
            if held_back:
                continue
            break
        labels = _labels(cand[[k for k, _ in passed]], len(units))
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


def _whole_sets(
    units: list[np.ndarray],
    near: np.ndarray,
    level: float,
    seed: list[int],
    data: _Data,
    out: Joined,
) -> list[np.ndarray]:
    """Join each look-alike set of fragments (a connected component of the look-alike pairs,
    2 to WHOLE_MAX fragments) whole when every split of it into two sides passes the pair test
    (an intersection-union test of "the set is made of two parts that do not influence each
    other", so the splits need no correction among themselves), with Holm's procedure over the
    sets at ``level``. A group of 5 copies that came back as 5 lone records has no strong pair,
    but every split of it has pooled evidence on both sides."""
    edges = _unit_pairs(units, near, data.inc.shape[0])
    if not len(edges):
        return units
    labels = _labels(edges, len(units))
    sets = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    sets = [c for c in sets if 2 <= len(c) <= WHOLE_MAX]
    if not sets:
        return units
    out.tested += len(sets)
    tests = [
        _SetTest(data, [units[k] for k in c], level / len(sets), [*seed, 0, i])
        for i, c in enumerate(sets)
    ]
    merged = set()
    for i, bar in _holm(tests, level):
        parts = [units[k].tolist() for k in sets[i]]
        out.joins.append(Join(parts, tests[i].p_value, bar, 0, tests[i].tau))
        merged.update(sets[i].tolist())
    whole = [np.sort(np.concatenate([units[k] for k in c])) for c in sets if c[0] in merged]
    return whole + [u for k, u in enumerate(units) if k not in merged]
