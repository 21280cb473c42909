"""Clusters of records that influence each other: links (significant pairwise influence, or
the mutual low-margin rule) and their connected components.

Only each target's top-k influencers are read, so this scales to N = 20,000 without an N x N
matrix. NaN influences, standard errors and margins never link."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.stats import norm
from scipy.stats import t as student_t

from memaudit.config import FindingsConfig
from memaudit.estimate.adjusted import design
from memaudit.estimate.budget import JOINT_FIT_ELEMENTS, fit_chunk, row_block
from memaudit.estimate.influence import InfluenceResult, estimate
from memaudit.estimate.registry import get_estimator
from memaudit.findings.similarity import link_similarity
from memaudit.modality import TEXT, Modality


@dataclass
class Link:
    target: int  # t: the record whose loss drops
    source: int  # i: the training record that lowers it
    influence: float  # I[t, i]
    se: float
    z: float  # influence / se
    lexical_similarity: float | None  # None for images
    basis: str = "evidence"  # "evidence": the z rule; "mutual": mutual low-margin competitors
    pixel_similarity: float | None = None  # images: see pixel_similarity
    # The rule's statistic (z rule: z; mutual rule: pooled z, see group_z) and the
    # threshold it passed (None: the rule had none, e.g. the mutual rule uncalibrated).
    statistic: float | None = None
    threshold: float | None = None

    @property
    def similarity(self) -> float:
        return (
            self.pixel_similarity
            if self.pixel_similarity is not None
            else (self.lexical_similarity)
        )


@dataclass
class Cluster:
    id: int  # rank by risk_score, 0 = riskiest
    members: list[int]
    links: list[Link]
    kind: str  # "textual" | "visual" | "influence" | "mixed" (which links are near-duplicates)
    min_margin: float | None  # lowest defined Top-1 influence margin among the members
    max_bleu_gain: float | None  # None when no BLEU gain was given (or none finite)
    risk_score: float
    reasons: list[str] = field(default_factory=list)
    # Fragments joined on pooled evidence (memaudit.findings.joining.Join.to_json), if any.
    joins: list[dict[str, Any]] = field(default_factory=list)


def cluster_risk(size: int, min_margin: float | None, max_bleu_gain: float | None) -> float:
    """risk = log2(size) + 1 / lowest margin + highest BLEU gain (clipped to [0, 1]).

    More copies mean more exposure and each doubling weighs the same; a margin near 1 says a
    member's own inclusion no longer dominates (the paper's near-duplicate signature), so its
    inverse (in (0, 1], margins are >= 1) adds up to one unit; measured extractability adds up
    to one unit. An undefined margin or missing BLEU adds nothing.
    """
    score = float(np.log2(size))
    if min_margin is not None and min_margin > 0:
        score += min(1.0, 1.0 / min_margin)
    if max_bleu_gain is not None:
        score += float(np.clip(max_bleu_gain, 0.0, 1.0))
    return score


def n_records(result: InfluenceResult) -> int:
    return len(result.self_influence)


def optional_array(values: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr


def joint_influence(
    losses: np.ndarray,
    inclusion: np.ndarray,
    targets: np.ndarray,
    candidates: np.ndarray,
    model_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Influence of each target's own inclusion and of its candidates, estimated jointly, with
    standard errors: minus the coefficients of the least-squares fit
    L[t, j] ~ 1 + P[t, j] + sum_k P[c_k, j] over the used models (residual variance with
    M - m - 2 degrees of freedom). Returns two (K, m + 1) arrays; column 0 is the target itself.

    Why: with few models two random inclusion columns can agree on most models, and then the
    plain difference of means credits i with t's self-influence (at z up to 9 on a 24-model
    ensemble); and a planted record's group-mates each swing its loss, adding noise to every
    other mate's estimate. Holding the target's and the other candidates' inclusion fixed
    removes both. Candidates of -1 (padding), or whose column repeats or complements an earlier
    regressor, are not identifiable: NaN. O(K M m^2) in chunks.
    """
    losses = np.asarray(losses, dtype=np.float64)
    inc = np.asarray(inclusion)
    if model_mask is not None:
        used = np.asarray(model_mask, dtype=bool)
        losses, inc = losses[:, used], inc[:, used]
    targets = np.asarray(targets, dtype=np.int64)
    candidates = np.asarray(candidates, dtype=np.int64).reshape(len(targets), -1)
    k_all, m = candidates.shape
    n_models = losses.shape[1]
    infl = np.full((k_all, m + 1), np.nan)
    se = np.full((k_all, m + 1), np.nan)
    dof = n_models - m - 2
    if dof < 1:
        return infl, se
    step = fit_chunk(JOINT_FIT_ELEMENTS, n_models * (m + 2))
    for lo in range(0, k_all, step):
        t, c = targets[lo : lo + step], candidates[lo : lo + step]
        # Regressors: intercept, own inclusion, candidates; a regressor that repeats or
        # complements an earlier one (or is constant) cannot be told apart from it, so it is
        # dropped rather than split an effect between the two (see adjusted.design).
        xt, keep, gram = design(inc, np.column_stack([t, c]))
        kept = np.concatenate([np.ones((len(t), 1), dtype=bool), keep], axis=1)
        y = losses[t]
        inv = np.linalg.pinv(gram, hermitian=True)
        xty = np.matmul(xt, y[:, :, None])
        xty *= kept[:, :, None]
        beta = np.matmul(inv, xty)[:, :, 0] * kept
        res = y - np.matmul(beta[:, None, :], xt)[:, 0]
        s2 = (res * res).sum(axis=1) / dof
        var = s2[:, None] * np.einsum("kii->ki", inv)
        ok = keep & (var[:, 1:] > 0)
        infl[lo : lo + step] = np.where(ok, -beta[:, 1:], np.nan)
        se[lo : lo + step] = np.where(ok, np.sqrt(np.where(ok, var[:, 1:], 1.0)), np.nan)
    return infl, se


def adjusted_influence(
    losses: np.ndarray,
    inclusion: np.ndarray,
    targets: np.ndarray,
    sources: np.ndarray,
    model_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Influence of sources[k] on targets[k] with the target's own inclusion held fixed: the
    one-candidate case of :func:`joint_influence`."""
    infl, se = joint_influence(losses, inclusion, targets, np.asarray(sources)[:, None], model_mask)
    return infl[:, 1], se[:, 1]


def link_candidates(
    losses: np.ndarray, inclusion: np.ndarray, m: int, model_mask: np.ndarray | None = None
) -> np.ndarray:
    """(N, m) each target's strongest other influencers once its own inclusion is removed.

    Centring each row of L within its own inclusion strata takes out the target's
    self-influence, which otherwise dominates the noise of every I[t, i] at small M; the
    difference of means of what is left ranks the candidates. Blockwise, like the estimator.
    """
    inc = np.asarray(inclusion).astype(bool)
    losses = np.asarray(losses, dtype=np.float64)
    used = np.ones(inc.shape[1], dtype=bool) if model_mask is None else np.asarray(model_mask)
    centred = _centred_copy(losses, inc, used)
    # Only the ranking is used: the influence alone, half the matrix product.
    top = estimate(centred, inc, top_k=min(m + 1, len(inc)), model_mask=used, with_se=False).top_idx
    others = np.where(top == np.arange(len(top))[:, None], -1, top)
    # Keep m per row, self removed, order preserved, -1 padding last.
    order = np.argsort(others < 0, axis=1, kind="stable")
    return np.take_along_axis(others, order, axis=1)[:, :m]


def centred_margins(
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None = None,
    min_z: float = 3.0,
) -> dict[str, np.ndarray]:
    """A Top-1 margin whose denominator is cleared of t's own inclusion swing (the "centred
    margin"), for ranking targets as the paper's image experiment does.

    The plain margin divides the largest influence on t by the second-largest; for a record
    without near-duplicates that is a noise maximum, and at small M the noise is dominated by
    t's own self-influence leaking through columns of P that overlap t's by chance (see
    :func:`link_candidates`), so unique records get margins near 1 as well. Here the
    numerator is t's self-influence (difference of means) and the denominator the largest
    influence on t from another record after centring L[t] within t's own inclusion strata:
    ``centred_margin = self-influence / that``; undefined (NaN) unless both are positive and
    the larger of the two is significant (influence / standard error >= min_z): for an image
    the models classify right whether or not they train on it, both are noise and their ratio
    says nothing. With M = 1,000 it agrees with the plain margin. Measured on 320 CIFAR-10
    images with 20 planted pairs, M = 64 (the 12 lowest targets whose top other influencer is
    their planted copy): plain margin 6, regression-adjusted estimator's margin 5, centred
    margin without the significance rule 4, with it 11.

    Returns 'centred_margin', 'self_influence', 'self_se', 'other' (the strongest other
    influencer, -1 if none), 'other_influence' and 'other_se' (its centred influence and
    standard error), all (N,)."""
    inc = np.asarray(inclusion).astype(bool)
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    used = np.ones(inc.shape[1], dtype=bool) if model_mask is None else np.asarray(model_mask)
    plain = estimate(losses, inc, top_k=1, model_mask=used)
    centred = _centred_copy(losses, inc, used)
    est = estimate(centred, inc, top_k=min(2, n), model_mask=used)
    idx, val, se = est.top_idx, est.top_val, est.top_se
    pick = np.where(idx[:, 0] == np.arange(n), 1, 0)  # skip t itself (~0 after centring)
    pick = np.minimum(pick, idx.shape[1] - 1)
    rows = np.arange(n)
    other = idx[rows, pick]
    other_val = np.where(other >= 0, val[rows, pick], np.nan)
    other_se = np.where(other >= 0, se[rows, pick], np.nan)
    self_infl, self_se = plain.self_influence, plain.self_se
    with np.errstate(invalid="ignore", divide="ignore"):
        significant = (self_infl / self_se >= min_z) | (other_val / other_se >= min_z)
        ok = (other_val > 0) & (self_infl > 0) & significant  # NaN compares False
        margin = np.where(ok, self_infl / np.where(ok, other_val, 1.0), np.nan)
    return {
        "centred_margin": margin,
        "self_influence": self_infl,
        "self_se": self_se,
        "other": other,
        "other_influence": other_val,
        "other_se": other_se,
    }


def link_thresholds(
    cfg: FindingsConfig, n_records: int, n_models: int, adjusted: bool
) -> tuple[float, float]:
    """The (z, fraction) a link must reach for N records and M models: cfg.link_z and
    cfg.link_fraction, raised by cfg.link_fwer and (plain estimator only) the chance-overlap
    guard, as documented in FindingsConfig."""
    z, fraction = cfg.link_z, cfg.link_fraction
    pairs = n_records * (n_records - 1)
    dof = n_models - (cfg.link_candidates + 2 if adjusted else 3)
    if cfg.link_fwer is not None and pairs > 0:
        z = max(z, float(student_t.isf(cfg.link_fwer / pairs, max(dof, 1))))
    if cfg.chance_overlap_guard and not adjusted and pairs > 2 and n_models > 0:
        fraction = max(fraction, float(np.sqrt(2.0 * np.log(pairs / 2) / n_models)))
    return z, fraction


def _centred_copy(losses: np.ndarray, inc: np.ndarray, used: np.ndarray) -> np.ndarray:
    """L with the used columns of each row centred within its own inclusion strata, in row
    blocks (the whole matrix at once holds about six N x M float64 temporaries)."""
    centred = losses.copy()
    step = row_block(losses.shape[1])
    for lo in range(0, len(losses), step):
        rows = slice(lo, lo + step)
        centred[rows, used] = _centre_within(
            losses[rows][:, used], inc[rows][:, used].astype(np.float64)
        )
    return centred


def _centre_within(v: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Subtract, row by row, the mean of v within each stratum (0/1) of strata."""
    n1 = strata.sum(axis=1, keepdims=True)
    n0 = strata.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.nan_to_num((v * strata).sum(axis=1, keepdims=True) / n1)
        m0 = np.nan_to_num((v * (1 - strata)).sum(axis=1, keepdims=True) / n0)
    return v - np.where(strata > 0, m1, m0)


def find_links(
    result: InfluenceResult,
    cfg: FindingsConfig,
    losses: np.ndarray | None = None,
    inclusion: np.ndarray | None = None,
    model_mask: np.ndarray | None = None,
    *,
    z_threshold: float | None = None,
    mutual_threshold: float | None = None,
) -> np.ndarray:
    """(t, i, influence, se, z, basis, statistic) rows of every link that passes a rule in
    FindingsConfig (basis 0: the z rule, statistic = z; 1: mutual low-margin competitors, where
    the estimator allows it (Estimator.mutual_links), statistic = the pooled z of
    :func:`group_z`).

    Thresholds from :func:`link_thresholds`, or ``z_threshold`` / ``mutual_threshold`` when
    given (the null-calibrated ones, memaudit.findings.calibration); without a mutual threshold
    the mutual rule links on its selection alone. Without losses, the candidates are each
    target's top-k influencers with their plain estimates. With losses and inclusion, the
    candidates come from :func:`link_candidates` and are estimated jointly by
    :func:`joint_influence`, and the fraction is taken of the largest effect in that fit.
    """
    min_z, _ = link_thresholds(cfg, n_records(result), result.n_models, losses is not None)
    if z_threshold is not None:
        min_z = max(min_z, z_threshold)
    z_rows, mutual_rows = link_statistics(result, cfg, losses, inclusion, model_mask)
    rows = z_rows[z_rows[:, 6] >= min_z]
    if len(mutual_rows):
        n = n_records(result)
        # Pairs the z rule links already (either direction) keep that rule's evidence.
        done = np.concatenate([rows[:, 0] * n + rows[:, 1], rows[:, 1] * n + rows[:, 0]])
        keep = ~np.isin(mutual_rows[:, 0] * n + mutual_rows[:, 1], done)
        if mutual_threshold is not None:
            keep &= mutual_rows[:, 6] >= mutual_threshold
        rows = np.concatenate([rows, mutual_rows[keep]])
    return rows


def link_statistics(
    result: InfluenceResult,
    cfg: FindingsConfig,
    losses: np.ndarray | None = None,
    inclusion: np.ndarray | None = None,
    model_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate of each link rule with its statistic, before the rule's threshold on
    it: (z rule rows, mutual rule rows), each (t, i, influence, se, z, basis, statistic).
    z rule rows meet every condition of the rule but the z threshold; mutual rows meet the
    selection of the mutual rule (empty unless cfg.mutual_links and the adjusted estimator).
    The null calibration reads the statistics of both on shuffled losses."""
    idx, val, se = result.top_idx, result.top_val, result.top_se
    n = n_records(result)
    if (losses is None) != (inclusion is None):
        raise ValueError("give both losses and inclusion, or neither")
    _, min_fraction = link_thresholds(cfg, n, result.n_models, losses is not None)
    # The largest influence on t over all i is the first top-k entry (descending order).
    largest = result.top_val[:, :1]
    if losses is not None:
        m = max(1, min(cfg.link_candidates, result.n_models - 5, n - 1))
        idx = link_candidates(losses, inclusion, m, model_mask)
        joint, joint_se = joint_influence(losses, inclusion, np.arange(n), idx, model_mask)
        val, se = joint[:, 1:], joint_se[:, 1:]
        # Compare with the largest effect in the same fit (usually the target's own).
        largest = np.nanmax(np.where(np.isfinite(joint), joint, -np.inf), axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where((se > 0) & np.isfinite(se), val / se, np.nan)
        # NaN compares False: padded entries, undefined se or an undefined largest never link.
        ok = (
            (idx >= 0)
            & (idx != np.arange(n)[:, None])
            & (val > 0)
            & np.isfinite(z)
            & (val >= min_fraction * largest)
        )
    t, c = np.nonzero(ok)
    stat = z[t, c]
    if losses is not None and len(t):
        stat = (stat + _reverse_z(idx, z, t, idx[t, c], losses, inclusion, model_mask)) / np.sqrt(
            2.0
        )
    z_rows = np.column_stack([t, idx[t, c], val[t, c], se[t, c], z[t, c], np.zeros(len(t)), stat])
    mutual_rows = np.empty((0, 7))
    if cfg.mutual_links and get_estimator(result.estimator).mutual_links:
        mutual_rows = _mutual_links(result, cfg, np.empty((0, 6)))
        if len(mutual_rows) and losses is not None:
            # Evidence from the data, not from the ranking that selected the pair: each
            # direction's influence with the target's own inclusion held fixed.
            mt, mi = mutual_rows[:, 0].astype(np.int64), mutual_rows[:, 1].astype(np.int64)
            a, a_se = adjusted_influence(losses, inclusion, mt, mi, model_mask)
            with np.errstate(invalid="ignore", divide="ignore"):
                mutual_rows[:, 2], mutual_rows[:, 3] = a, a_se
                mutual_rows[:, 4] = np.where(a_se > 0, a / a_se, np.nan)
            stat = group_z(mutual_rows, losses, inclusion, model_mask, n)
            return z_rows, np.column_stack([mutual_rows, stat])
        mutual_rows = np.column_stack([mutual_rows, pair_z(mutual_rows, n)])
    return z_rows, mutual_rows


def _reverse_z(
    idx: np.ndarray,
    z: np.ndarray,
    t: np.ndarray,
    i: np.ndarray,
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None,
) -> np.ndarray:
    """z of I[i, t] for each candidate link t <- i: from i's own joint fit where t is among
    i's candidates, else from the one-candidate fit (i's own inclusion held fixed); NaN -> 0.

    Why the z rule judges a pair by (z[t, i] + z[i, t]) / sqrt(2): near-duplicates influence
    each other both ways, so the pooled z grows by up to sqrt(2) for them, while a record that
    lowers the loss of unrelated records one way (a "hub": measured on the weak-memorization
    demo, one record at z 7.0 and 8.5 on two unrelated questions that did not influence it
    back) no longer links on one direction alone."""
    n = len(idx)
    width = idx.shape[1]
    flat = idx.reshape(-1).astype(np.int64)
    key = np.repeat(np.arange(n, dtype=np.int64), width) * n + flat
    key = np.where(flat >= 0, key, -1)
    order = np.argsort(key, kind="stable")
    want = i.astype(np.int64) * n + t.astype(np.int64)
    at = np.minimum(np.searchsorted(key[order], want), len(key) - 1)
    found = key[order][at] == want
    rev = np.full(len(t), np.nan)
    rev[found] = z.reshape(-1)[order][at][found]
    missing = ~found
    if missing.any():
        a, a_se = adjusted_influence(losses, inclusion, i[missing], t[missing], model_mask)
        with np.errstate(invalid="ignore", divide="ignore"):
            rev[missing] = np.where(a_se > 0, a / a_se, np.nan)
    return np.where(np.isfinite(rev), rev, 0.0)


def pair_z(rows: np.ndarray, n: int) -> np.ndarray:
    """Pooled z of each row's pair: (z[t, i] + z[i, t]) / sqrt(2), rows as (t, i, ., ., z, ...)
    with both directions present; a row whose reverse is missing pools with z = 0 (so a
    one-sided effect needs sqrt(2) times the z). Under the null the two directions are fits to
    different records' losses, nearly independent, so the pooled z is near standard."""
    if len(rows) == 0:
        return np.zeros(0)
    t, i = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    z = np.where(np.isfinite(rows[:, 4]), rows[:, 4], 0.0)
    key = t * n + i
    order = np.argsort(key)
    at = np.minimum(np.searchsorted(key[order], i * n + t), len(key) - 1)
    found = key[order][at] == i * n + t
    reverse = np.where(found, z[order][at], 0.0)
    return (z + reverse) / np.sqrt(2.0)


def group_z(
    rows: np.ndarray,
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None,
    n: int,
) -> np.ndarray:
    """Pooled evidence for each row (t, i, ...) of a graph of candidate links, the statistic the
    mutual rule is calibrated and judged on.

    Near-duplicates substitute for each other, so what lowers a copy's loss is having other
    copies in, not one particular copy: each pairwise effect shrinks as the group grows. The
    evidence is therefore pooled over members: :func:`_pooled_z` of a set A against a set B
    fits, for each member u of A or B, L[u] ~ 1 + P[u] + (how many of u's own side are in) +
    (how many of the other side are in) over the models and sums the z of the last coefficient
    over the members (/ sqrt(size)). Counts, not "any copy in": with 4 copies "any in" is 1 on
    15 of 16 models, and its z rests on a handful of models (heavy tails: measured pooled z
    of 10 between two unrelated planted groups on the strong demo).

    A row that is a bridge of its component (removing it splits the component) joins two
    fragments and gets the fragments' pooled z against each other, so two real groups
    joined by one chance link are not merged on their own strength (a false merge is worse than
    a fragment); any other row gets the pooled z of its 2-edge-connected block against itself
    (each member against the rest). For a lone pair both are the pair's pooled z."""
    if len(rows) == 0:
        return np.zeros(0)
    t, i = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    used = slice(None) if model_mask is None else np.asarray(model_mask, dtype=bool)
    inc = np.asarray(inclusion)[:, used].astype(np.float64)
    loss = np.asarray(losses, dtype=np.float64)[:, used]
    pairs = {(min(a, b), max(a, b)) for a, b in zip(t.tolist(), i.tolist(), strict=True)}
    edges = sorted(pairs)
    stat: dict[tuple[int, int], float] = {}
    bridges = _bridges(edges, n)
    inner = [e for e in edges if e not in bridges]
    # 2-edge-connected blocks: components once the bridges are gone.
    blocks = _components(inner, n)
    for e in inner:
        members = blocks[e[0]]
        stat[e] = _pooled_z(loss, inc, members, members)
    whole = _components(edges, n)
    for e in bridges:
        rest = [x for x in edges if x != e]
        side = _components(rest, n, within=whole[e[0]])
        stat[e] = _pooled_z(loss, inc, side[e[0]], side[e[1]])
    return np.array([stat[(min(a, b), max(a, b))] for a, b in zip(t, i, strict=True)])


def _components(
    edges: list[tuple[int, int]], n: int, within: np.ndarray | None = None
) -> dict[int, np.ndarray]:
    """Each node of ``edges`` (and of ``within``) -> the members of its connected component."""
    nodes = np.asarray(edges, dtype=np.int64).reshape(-1)
    if within is not None:
        nodes = np.concatenate([nodes, np.asarray(within, dtype=np.int64)])
    nodes = np.unique(nodes)
    pos = {int(v): k for k, v in enumerate(nodes)}
    e = np.array([(pos[a], pos[b]) for a, b in edges], dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    return {int(v): nodes[labels == labels[k]] for k, v in enumerate(nodes)}


def _bridges(edges: list[tuple[int, int]], n: int) -> set[tuple[int, int]]:
    """Edges whose removal disconnects their endpoints (brute force within each component:
    candidate graphs are small, a few hundred links at most)."""
    out = set()
    if not edges:
        return out
    comp = _components(edges, n)
    for k, (a, b) in enumerate(edges):
        members = set(comp[a].tolist())
        rest = [e for j, e in enumerate(edges) if j != k and e[0] in members]
        if not rest:
            out.add((a, b))
            continue
        sides = _components(rest, n, within=np.array([a, b]))
        if b not in set(sides[a].tolist()):
            out.add((a, b))
    return out


def guard_merges(
    rows: np.ndarray,
    losses: np.ndarray,
    inclusion: np.ndarray,
    model_mask: np.ndarray | None,
    n: int,
    floor: float,
    level: float,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Drop links that alone join two fragments of two or more records each, unless the two
    fragments' pooled evidence against each other (:func:`_pooled_z`) reaches max(floor, the
    one-sided normal quantile at level / the number of such merges). Either rule's single
    link can join two real groups by chance (measured: a z-rule link at z 5.4 joined two
    saturating groups of 4 whose residual losses the null shuffles do not model); one
    group's own strength must not carry the merge. Returns the kept rows and, per tested
    merge, its evidence."""
    if len(rows) == 0:
        return rows, []
    t, i = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
    edges = sorted({(min(a, b), max(a, b)) for a, b in zip(t.tolist(), i.tolist(), strict=True)})
    bridges = sorted(_bridges(edges, n))
    merges = []
    for e in bridges:
        rest = [x for x in edges if x != e]
        sides = _components(rest, n, within=np.array(e)) if rest else {}
        a = sides.get(e[0], np.array([e[0]]))
        b = sides.get(e[1], np.array([e[1]]))
        if len(a) >= 2 and len(b) >= 2:
            merges.append((e, a, b))
    if not merges:
        return rows, []
    used = slice(None) if model_mask is None else np.asarray(model_mask, dtype=bool)
    inc = np.asarray(inclusion)[:, used].astype(np.float64)
    loss = np.asarray(losses, dtype=np.float64)[:, used]
    bar = max(floor, float(norm.isf(level / len(merges))))
    drop, evidence = set(), []
    for e, a, b in merges:
        z = _pooled_z(loss, inc, a, b)
        evidence.append({"link": list(e), "sizes": [len(a), len(b)], "pooled_z": z, "bar": bar})
        if not z >= bar:
            drop.add(e)
    key = [(min(x, y), max(x, y)) in drop for x, y in zip(t.tolist(), i.tolist(), strict=True)]
    return rows[~np.array(key, dtype=bool)], evidence


def _pooled_z(loss: np.ndarray, inc: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """sum over members u of A and B of the z of (members of the other side in) in the fit of
    L[u] on its own inclusion and (members of its own side in, u excluded), over
    sqrt(members); A = B: each member against the rest of the set."""
    same = a is b or (len(a) == len(b) and np.array_equal(np.sort(a), np.sort(b)))
    members = np.unique(np.concatenate([a, b]))
    m = inc.shape[1]
    zs = []
    for u in members:
        own = a if u in a else b
        other = own if same else (b if own is a else a)
        cols = [np.ones(m), inc[u]]
        mates = own[own != u]
        if not same and len(mates):
            cols.append(inc[mates].sum(axis=0))
        target = other[other != u]
        if not len(target):
            continue
        cols.append(inc[target].sum(axis=0))
        x = np.column_stack(cols)
        dof = m - x.shape[1]
        beta, *_ = np.linalg.lstsq(x, loss[u], rcond=None)
        res = loss[u] - x @ beta
        var = (res @ res) / max(dof, 1) * np.linalg.pinv(x.T @ x)[-1, -1]
        zs.append(-beta[-1] / np.sqrt(var) if var > 0 and dof > 0 else 0.0)
    return float(np.sum(zs) / np.sqrt(len(members))) if zs else 0.0


# Link.basis by the rule number in find_links' rows.
BASES = ("evidence", "mutual")


def mutual_fraction(cfg: FindingsConfig, modality: Modality) -> float:
    """cfg.mutual_fraction, or its per-modality default when it is None."""
    if cfg.mutual_fraction is not None:
        return cfg.mutual_fraction
    return modality.mutual_fraction


def _mutual_links(result: InfluenceResult, cfg: FindingsConfig, taken: np.ndarray) -> np.ndarray:
    """Rows (t, i, I[t, i], se, z, 1) for pairs of low-margin records that are each among the
    other's cfg.mutual_top strongest other influencers (see FindingsConfig), both directions,
    except pairs already linked in ``taken``."""
    n = n_records(result)
    low = result.margin_defined & (result.margin < cfg.mutual_margin)
    idx = result.top_idx[:, : cfg.mutual_top + 1]
    own = np.arange(n)[:, None]
    # Each target's first mutual_top other influencers (its own entry skipped).
    other = (idx >= 0) & (idx != own)
    rank = np.cumsum(other, axis=1)
    keep = other & (rank <= cfg.mutual_top) & low[:, None]
    t, c = np.nonzero(keep)
    i = idx[t, c]
    keep_i = low[i]
    t, c, i = t[keep_i], c[keep_i], i[keep_i]
    # Pairs as keys a * n + b: t -> i is mutual when i -> t is an edge too, and is new unless
    # taken holds it in either direction (np.isin: sorted, no Python set of N k pairs).
    edge = t * n + i
    done_t, done_i = taken[:, 0].astype(np.int64), taken[:, 1].astype(np.int64)
    done = np.concatenate([done_t * n + done_i, done_i * n + done_t])
    mutual = np.isin(i * n + t, edge)
    sel = mutual & ~np.isin(edge, done)
    if cfg.mutual_fraction:
        # Each direction's share of its target's largest influence; the pair keeps the larger.
        with np.errstate(invalid="ignore", divide="ignore"):
            share = result.top_val[t, c] / result.top_val[t, 0]
        share = np.where(np.isfinite(share) & (share > 0), share, 0.0)
        order = np.argsort(edge)
        at = np.minimum(np.searchsorted(edge[order], i * n + t), len(edge) - 1)
        reverse = np.where(mutual, share[order][at], 0.0)
        sel &= np.maximum(share, reverse) >= cfg.mutual_fraction
    if not sel.any():
        return np.empty((0, 6))
    t, c, i = t[sel], c[sel], i[sel]
    val, se = result.top_val[t, c], result.top_se[t, c]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(se > 0, val / se, np.nan)
    return np.column_stack([t, i, val, se, z, np.ones(len(t))])


@dataclass
class ClusterSets:
    """What :func:`find_cluster_sets` finds."""

    clusters: list[Cluster]  # near-duplicate clusters, ranked
    cluster_of: np.ndarray  # (N,) each record's near-duplicate cluster id, -1 for none
    influence: list[Cluster]  # records linked without looking alike (empty unless apart)


def find_clusters(
    result: InfluenceResult,
    texts: Sequence[str],
    cfg: FindingsConfig | None = None,
    bleu_gain: np.ndarray | None = None,
    **options: Any,
) -> tuple[list[Cluster], np.ndarray]:
    """(clusters, cluster_of) of every link in one graph, whether or not the records look alike
    (:func:`find_cluster_sets` with apart=False; the options are its keywords)."""
    found = find_cluster_sets(result, texts, cfg, bleu_gain, apart=False, **options)
    return found.clusters, found.cluster_of


def find_cluster_sets(
    result: InfluenceResult,
    texts: Sequence[str],
    cfg: FindingsConfig | None = None,
    bleu_gain: np.ndarray | None = None,
    *,
    losses: np.ndarray | None = None,
    inclusion: np.ndarray | None = None,
    model_mask: np.ndarray | None = None,
    images: np.ndarray | None = None,
    modality: Modality = TEXT,
    z_threshold: float | None = None,
    mutual_threshold: float | None = None,
    strict_thresholds: tuple[float | None, float | None] | None = None,
    apart: bool = True,
    vectors=None,
) -> ClusterSets:
    """Links from each target's top-k list only (so it scales to N = 20,000); undirected graph;
    clusters = connected components with >= 2 records. Returns clusters ranked by
    :func:`cluster_risk` (rank 0 = riskiest; ties: smallest member first) and cluster_of (N,)
    int, the cluster id of each record, -1 for unclustered records. Cluster ids follow the
    ranking. Each cluster's ``reasons`` are sentences such as "5 records linked by influence
    (z >= 4.2)", "lowest margin 1.12", "textual near-duplicates (similarity 0.93)", "BLEU gain
    up to 0.41". Links carry the ``modality``'s similarity (memaudit.findings.similarity): for
    images, the pixel similarity of ``images`` (uint8 N x H x W x 3), and near-duplicate
    clusters are "visual"; the default mutual_fraction is the modality's. ``z_threshold`` and
    ``mutual_threshold``: the null-calibrated thresholds (see :func:`find_links`);
    ``strict_thresholds`` (z rule, mutual rule): the family-wise ones that links between
    records below the modality's similarity threshold must reach (memaudit.findings.
    calibration explains why).

    ``apart`` (the findings stage's way): near-duplicate clusters are the components of the
    links between records that look alike (text or pixels at the modality's threshold); the
    links between records that do not are a finding of their own, ``ClusterSets.influence``
    (records that influence each other without looking alike: one style, one template, one
    topic), and join no near-duplicate cluster. Measured on held-out SMS spam (LoRA, 128
    models): joining them gave pair precision 0.72 against the natural and planted duplicate
    groups, keeping them apart 1.00 at the same recall (0.37); the weak-memorization demo at
    128 models 0.97 -> 0.99 (recall 0.82 kept). Without it everything is one graph.

    ``vectors``: the texts' TF-IDF (:func:`memaudit.findings.similarity.lexical_vectors`), when
    the caller has fit it already."""
    cfg = cfg or FindingsConfig()
    n = n_records(result)
    if len(texts) != n:
        raise ValueError(f"texts has {len(texts)} entries for {n} records")
    bleu = optional_array(bleu_gain, n, "bleu_gain")

    cfg = replace(cfg, mutual_fraction=mutual_fraction(cfg, modality))
    rows = find_links(
        result,
        cfg,
        losses,
        inclusion,
        model_mask,
        z_threshold=z_threshold,
        mutual_threshold=mutual_threshold,
    )
    # Column 7: each link's similarity, measured once (the strict thresholds and the split
    # into near-duplicate and influence clusters both read it).
    rows = np.column_stack(
        [rows, link_similarity(modality, rows[:, :2].astype(np.int64), texts, images, vectors)]
    )
    min_z, _ = link_thresholds(cfg, n, result.n_models, losses is not None)
    applied = {0: max(min_z, z_threshold or -np.inf), 1: mutual_threshold}
    if strict_thresholds is not None and len(rows):
        rows = _strict_for_dissimilar(rows, strict_thresholds, applied, cfg, modality, min_z)
    if losses is not None and z_threshold is not None:
        # Calibrated runs: a single link may not merge two fragments on their own strength.
        floor = mutual_threshold if mutual_threshold is not None else -np.inf
        level = (cfg.link_fwer or 0.05) / 2
        rows, _ = guard_merges(rows, losses, inclusion, model_mask, n, floor, level)
    sim = rows[:, 7]
    margin = np.where(result.margin_defined & np.isfinite(result.margin), result.margin, np.nan)

    def build(keep: np.ndarray) -> tuple[list[Cluster], np.ndarray]:
        return _build_clusters(rows[keep], sim[keep], n, margin, bleu, cfg, modality, applied)

    if not apart:
        clusters, cluster_of = build(np.ones(len(rows), dtype=bool))
        return ClusterSets(clusters, cluster_of, [])
    alike = sim >= getattr(cfg, modality.threshold_field)
    clusters, cluster_of = build(alike)
    influence, _ = build(~alike)
    return ClusterSets(clusters, cluster_of, influence)


def _build_clusters(
    rows: np.ndarray,
    sim: np.ndarray,
    n: int,
    margin: np.ndarray,
    bleu: np.ndarray | None,
    cfg: FindingsConfig,
    modality: Modality,
    applied: dict[int, float | None],
) -> tuple[list[Cluster], np.ndarray]:
    """Connected components (two or more records) of the links ``rows`` (with their
    similarities ``sim``), ranked by :func:`cluster_risk`, and each record's cluster id."""
    t_idx = rows[:, 0].astype(np.int64)
    i_idx = rows[:, 1].astype(np.int64)
    graph = coo_matrix((np.ones(len(rows)), (t_idx, i_idx)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=n)
    comp_ids = np.flatnonzero(sizes >= 2)

    # Members and links of every component in O(N + K), no per-cluster scan of all records.
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], comp_ids)
    link_order = np.argsort(labels[t_idx], kind="stable")
    link_starts = np.searchsorted(labels[t_idx][link_order], comp_ids, side="left")
    link_ends = np.searchsorted(labels[t_idx][link_order], comp_ids, side="right")

    clusters: list[Cluster] = []
    for c, comp in enumerate(comp_ids):
        members = order[starts[c] : starts[c] + sizes[comp]]
        links = [
            Link(
                target=int(t_idx[k]),
                source=int(i_idx[k]),
                influence=float(rows[k, 2]),
                se=float(rows[k, 3]),
                z=float(rows[k, 4]),
                basis=BASES[int(rows[k, 5]) % 2],
                # lexical_similarity None for images, pixel_similarity None for text
                **{"lexical_similarity": None, modality.similarity_field: float(sim[k])},
                statistic=float(rows[k, 6]) if np.isfinite(rows[k, 6]) else None,
                threshold=applied[int(rows[k, 5])],
            )
            for k in link_order[link_starts[c] : link_ends[c]]
        ]
        clusters.append(_make_cluster(members, links, margin, bleu, cfg, modality))

    return _ranked(clusters, n)


def _ranked(clusters: list[Cluster], n: int) -> tuple[list[Cluster], np.ndarray]:
    """``clusters`` ranked by :func:`cluster_risk` (ties: smallest member first), ids set to
    their rank, and each record's cluster id (-1 for none)."""
    clusters.sort(key=lambda cl: (-cl.risk_score, cl.members[0]))
    cluster_of = np.full(n, -1, dtype=np.int64)
    for rank, cl in enumerate(clusters):
        cl.id = rank
        cluster_of[cl.members] = rank
    return clusters, cluster_of


def _strict_for_dissimilar(
    rows: np.ndarray,
    strict: tuple[float | None, float | None],
    applied: dict[int, float | None],
    cfg: FindingsConfig,
    modality: Modality,
    min_z: float,
) -> np.ndarray:
    """Drop the links between records that do not look alike (column 7: their similarity)
    whose statistic is below their rule's family-wise threshold (``strict``); ``applied``
    records which threshold each kind of link was held to, for the report."""
    alike = rows[:, 7] >= getattr(cfg, modality.threshold_field)
    bars = [max(min_z, strict[0] if strict[0] is not None else -np.inf), strict[1]]
    bar = np.array([-np.inf if bars[int(b)] is None else bars[int(b)] for b in rows[:, 5]])
    keep = alike | (rows[:, 6] >= bar)
    applied[2], applied[3] = bars  # the dissimilar links' thresholds, by rule
    out = rows[keep].copy()
    out[:, 5] = np.where(alike[keep], out[:, 5], out[:, 5] + 2)  # basis 2, 3: dissimilar
    return out


def _finite_extreme(values: np.ndarray | None, members: np.ndarray, fn: Any) -> float | None:
    if values is None:
        return None
    v = values[members]
    v = v[np.isfinite(v)]
    return float(fn(v)) if v.size else None


def _make_cluster(
    members: np.ndarray,
    links: list[Link],
    margin: np.ndarray,
    bleu: np.ndarray | None,
    cfg: FindingsConfig,
    modality: Modality = TEXT,
) -> Cluster:
    sims = np.array([lk.similarity for lk in links])
    textual = sims >= getattr(cfg, modality.threshold_field)
    word = modality.near_duplicate
    # No link at all: records joined on pooled evidence, which only joins look-alikes.
    kind = word if textual.all() else ("influence" if not textual.any() else "mixed")
    min_margin = _finite_extreme(margin, members, np.min)
    max_bleu = _finite_extreme(bleu, members, np.max)
    evidence = [lk.z for lk in links if lk.basis == "evidence"]
    n_mutual = len(links) - len(evidence)
    how = [f"{len(evidence)} link(s) at z >= {min(evidence):.1f}"] if evidence else []
    if n_mutual:
        pooled = [lk.statistic for lk in links if lk.basis == "mutual" and lk.statistic is not None]
        how.append(
            f"{n_mutual} between low-margin records (< {cfg.mutual_margin:g}) that are each "
            "other's top influencers" + (f" (pooled z >= {min(pooled):.1f})" if pooled else "")
        )
    reasons = [f"{len(members)} records linked by influence: {' and '.join(how)}"] if how else []
    if min_margin is not None:
        reasons.append(f"lowest margin {min_margin:.2f}")
    what = modality.similarity_label
    if kind == word:
        if len(sims):
            reasons.append(f"{word} near-duplicates ({what} {sims.min():.2f})")
    elif kind == "mixed":
        reasons.append(
            f"partly {word} near-duplicates ({int(textual.sum())} of {len(links)} links, "
            f"{what} {sims.min():.2f}-{sims.max():.2f})"
        )
    else:
        # Worth saying: the model treats them as duplicates though the texts differ.
        reasons.append(f"no {word} near-duplicate ({what} at most {sims.max():.2f})")
    if max_bleu is not None:
        reasons.append(f"BLEU gain up to {max_bleu:.2f}")
    return Cluster(
        id=-1,
        members=[int(m) for m in np.sort(members)],
        links=links,
        kind=kind,
        min_margin=min_margin,
        max_bleu_gain=max_bleu,
        risk_score=cluster_risk(len(members), min_margin, max_bleu),
        reasons=reasons,
    )


def rejoin_clusters(
    found: ClusterSets,
    groups: list[np.ndarray],
    joins: list[dict[str, Any]],
    result: InfluenceResult,
    cfg: FindingsConfig,
    bleu_gain: np.ndarray | None = None,
    modality: Modality = TEXT,
) -> ClusterSets:
    """``found`` with its near-duplicate clusters replaced by ``groups`` (memaudit.findings.
    joining: the clusters, some joined together or with flagged records, on pooled evidence),
    re-ranked; each joined cluster keeps its fragments' links and carries its ``joins``."""
    n = n_records(result)
    margin = np.where(result.margin_defined & np.isfinite(result.margin), result.margin, np.nan)
    bleu = optional_array(bleu_gain, n, "bleu_gain")
    by_members = {tuple(c.members): c for c in found.clusters}
    links_of: dict[int, list[Link]] = {}
    for c in found.clusters:
        for lk in c.links:
            links_of.setdefault(lk.target, []).append(lk)
    clusters = []
    for g in groups:
        members = np.sort(np.asarray(g, dtype=np.int64))
        same = by_members.get(tuple(members.tolist()))
        if same is not None:
            clusters.append(same)
            continue
        inside = set(members.tolist())
        links = [lk for t in members.tolist() for lk in links_of.get(t, [])]
        mine = [j for j in joins if set(j["parts"][0]) <= inside]
        cl = _make_cluster(members, links, margin, bleu, cfg, modality)
        worst = max(j["p_value"] for j in mine)
        cl.reasons.insert(
            1 if links else 0,
            f"{len(mine)} join(s) of look-alike fragments on pooled influence evidence "
            f"(conditional randomization test, p <= {worst:.2g}, family-wise level "
            f"{cfg.join_fwer:g})",
        )
        cl.joins = mine
        clusters.append(cl)
    clusters, cluster_of = _ranked(clusters, n)
    return ClusterSets(clusters, cluster_of, found.influence)
