"""What a deduplicator would have done: the lexical (or perceptual) pass a data engineer runs
before any audit, and how its groups compare with the ensemble's influence clusters.

* Text: MinHash LSH (datasketch) over character 5-gram shingles of the lower-cased,
  whitespace-collapsed text, Jaccard threshold 0.8 (text-dedup's defaults: 5-grams, about 0.8).
  Characters rather than words because audit records are short (a question and its answer,
  ~20 words): one replaced word removes 5 of ~16 word 5-grams (Jaccard ~0.5, never found at 0.8)
  but only ~5-9 of ~100 character 5-grams. ``unit="word"`` gives the word shingles. LSH only
  proposes candidates; each candidate pair is kept when its exact shingle Jaccard reaches the
  threshold, so the result does not depend on the hash's luck beyond recall (bands tuned for
  recall: LSH_WEIGHTS).
* Images: a 64-bit DCT perceptual hash (pHash: 32 x 32 grayscale, the 8 x 8 lowest
  frequencies without DC, above their median), the smaller Hamming distance of b and b
  mirrored, with bit-sampling LSH (20 tables of 16 random bits) for candidates.

Both are near-linear in N (the candidates of an LSH; no N x N matrix). Groups are the connected
components of the kept pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

TEXT_THRESHOLD = 0.8
NGRAM = 5
NUM_PERM = 256  # text-dedup's default
# LSH bands tuned for recall: every candidate is verified by its exact Jaccard, so a false
# candidate costs one set intersection. At 256 permutations (23 bands of 11 rows) a pair at
# Jaccard 0.8 becomes a candidate with probability 0.87, at 0.85 0.985 (equal weights: 0.46,
# 0.79).
LSH_WEIGHTS = (0.1, 0.9)
IMAGE_MAX_DISTANCE = 10  # of 64 bits; see image_groups


@dataclass
class DedupResult:
    method: str  # "minhash" | "phash"
    params: dict
    pairs: np.ndarray  # (K, 2) int, a < b: the near-duplicate pairs kept
    similarity: np.ndarray  # (K,) Jaccard (text) or 1 - Hamming / 64 (images)
    group_of: np.ndarray  # (N,) group id per record, -1 for none
    groups: list[list[int]] = field(default_factory=list)  # size >= 2, largest first


def shingles(text: str, ngram: int = NGRAM, unit: str = "char") -> set[str]:
    norm = " ".join(text.lower().split())
    if unit == "word":
        toks = norm.split(" ")
        if len(toks) < ngram:
            return {norm}
        return {" ".join(toks[i : i + ngram]) for i in range(len(toks) - ngram + 1)}
    if len(norm) < ngram:
        return {norm}
    return {norm[i : i + ngram] for i in range(len(norm) - ngram + 1)}


def _components(n: int, pairs: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    if len(pairs) == 0:
        return np.full(n, -1, dtype=np.int64), []
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    ids, counts = np.unique(labels, return_counts=True)
    big = ids[counts >= 2]
    # Largest first, ties by smallest member.
    members = [np.flatnonzero(labels == c) for c in big] if len(big) < 2000 else None
    if members is None:  # many groups: one sort instead of a scan per group
        order = np.argsort(labels, kind="stable")
        split = np.split(order, np.cumsum(np.bincount(labels))[:-1])
        members = [split[c] for c in big]
    members.sort(key=lambda m: (-len(m), int(m[0])))
    group_of = np.full(n, -1, dtype=np.int64)
    for k, m in enumerate(members):
        group_of[m] = k
    return group_of, [[int(i) for i in m] for m in members]


def text_groups(
    texts: Sequence[str],
    threshold: float = TEXT_THRESHOLD,
    ngram: int = NGRAM,
    unit: str = "char",
    num_perm: int = NUM_PERM,
    seed: int = 1,
) -> DedupResult:
    """Near-duplicate groups of ``texts`` by MinHash LSH, verified by exact Jaccard."""
    from datasketch import MinHash, MinHashLSH

    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    sets = [shingles(t, ngram, unit) for t in texts]
    encoded = [[s.encode("utf-8") for s in sh] for sh in sets]
    hashes = MinHash.bulk(encoded, num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    for i, h in enumerate(hashes):
        lsh.insert(i, h, check_duplication=False)
    cand = {(min(i, j), max(i, j)) for i, h in enumerate(hashes) for j in lsh.query(h) if j != i}
    kept, sim = [], []
    for a, b in sorted(cand):
        inter = len(sets[a] & sets[b])
        jac = inter / (len(sets[a]) + len(sets[b]) - inter)
        if jac >= threshold:
            kept.append((a, b))
            sim.append(jac)
    pairs = np.array(kept, dtype=np.int64).reshape(-1, 2)
    group_of, groups = _components(len(texts), pairs)
    params = {
        "shingle": f"{unit} {ngram}-grams",
        "threshold": threshold,
        "num_perm": num_perm,
        "candidates": len(cand),
    }
    return DedupResult("minhash", params, pairs, np.array(sim), group_of, groups)


def phash(images: np.ndarray) -> np.ndarray:
    """(N, 2) uint64: the 64-bit DCT hash of each image and of its mirror image."""
    from scipy.fft import dctn

    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x @ np.array([0.299, 0.587, 0.114])  # luma
    out = np.zeros((len(x), 2), dtype=np.uint64)
    weights = (1 << np.arange(64, dtype=np.uint64)).astype(np.uint64)
    for k, img in enumerate((x, x[:, :, ::-1])):
        small = _resize(img, 32)
        coef = dctn(small, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(x), 64)
        coef = coef[:, 1:]  # drop DC: brightness
        bits = coef > np.median(coef, axis=1, keepdims=True)
        bits = np.c_[bits, np.zeros(len(x), bool)]
        out[:, k] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Area-average (or repeat) N x H x W to N x size x size."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    return F.interpolate(t, size=(size, size), mode="area").squeeze(1).numpy()


def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def image_groups(
    images: np.ndarray,
    max_distance: int = IMAGE_MAX_DISTANCE,
    tables: int = 20,
    bits: int = 16,
    seed: int = 0,
) -> DedupResult:
    """Near-duplicate groups of images: pairs whose pHashes (b or b mirrored) differ in at most
    ``max_distance`` of 64 bits, candidates by bit-sampling LSH (a pair at distance d collides
    in one table with probability (1 - d/64)^bits)."""
    h = phash(images)
    n = len(h)
    bits_all = np.unpackbits(h.view(np.uint8).reshape(n, 2, 8), axis=2, bitorder="little")
    rng = np.random.default_rng(seed)
    cand = []
    for _ in range(tables):
        pick = rng.choice(64, size=bits, replace=False)
        w = (1 << np.arange(bits)).astype(np.int64)
        key = (bits_all[:, :, pick].astype(np.int64) * w).sum(axis=2)  # (N, 2)
        # Candidates: the plain key of a equals the plain or mirrored key of b.
        keys = np.r_[key[:, 0], key[:, 1]]
        who = np.r_[np.arange(n), np.arange(n)]
        order = np.lexsort((who, keys))
        ks, ws = keys[order], who[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.r_[starts, len(ks)])
        for s, z in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = np.unique(ws[s : s + z])
            if 1 < len(members) <= 200:  # a bucket of hundreds is a flat-image class, not copies
                a, b = np.triu_indices(len(members), 1)
                cand.append(np.c_[members[a], members[b]])
    pairs = np.unique(np.concatenate(cand), axis=0) if cand else np.zeros((0, 2), np.int64)
    d = (
        np.minimum(
            _popcount(h[pairs[:, 0], 0] ^ h[pairs[:, 1], 0]),
            _popcount(h[pairs[:, 0], 0] ^ h[pairs[:, 1], 1]),
        )
        if len(pairs)
        else np.zeros(0)
    )
    keep = d <= max_distance
    pairs, d = pairs[keep].astype(np.int64), d[keep]
    group_of, groups = _components(n, pairs)
    params = {
        "hash": "64-bit DCT pHash (mirror-invariant)",
        "max_distance": max_distance,
        "tables": tables,
        "bits": bits,
    }
    return DedupResult("phash", params, pairs, 1.0 - d / 64.0, group_of, groups)


# ---------------------------------------------------------------------------------------------
# Beside the influence clusters


def _pairs_count(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _same(a: np.ndarray, b: np.ndarray) -> int:
    """Pairs of records that share a label in a and in b (-1 = none)."""
    both = (a >= 0) & (b >= 0)
    if not both.any():
        return 0
    _, n = np.unique(np.c_[a[both], b[both]], axis=0, return_counts=True)
    return _pairs_count(n)


def three_way(
    dedup: DedupResult,
    cluster_of: np.ndarray,
    evidence=None,
    examples: int = 3,
) -> dict:
    """The deduplicator's groups against the influence clusters, by record pairs:

    * confirmed: near-duplicates by text (or pixels) in one influence cluster;
    * dedup_only: near-duplicates by text whose records are in no common cluster (what a
      deduplicator removes that the models did not learn from jointly at this M);
    * influence_only: pairs in one influence cluster in no common dedup group, and the clusters
      with no dedup pair at all (what a deduplicator misses).

    ``evidence(pairs) -> list[dict]``, optional: the influence evidence for example pairs of
    dedup_only (e.g. I[a, b], its z). Counts are exact (from label co-occurrence, no pair
    enumeration); examples are the first pairs/groups in order."""
    g = np.asarray(dedup.group_of)
    c = np.asarray(cluster_of)
    dedup_pairs = _pairs_count(np.unique(g[g >= 0], return_counts=True)[1])
    cluster_pairs = _pairs_count(np.unique(c[c >= 0], return_counts=True)[1])
    confirmed = _same(g, c)

    # Groups: a dedup group is confirmed when some pair of it shares a cluster.
    def labels_overlap(x, y):
        both = (x >= 0) & (y >= 0)
        u, n = np.unique(np.c_[x[both], y[both]], axis=0, return_counts=True)
        return {int(k) for k in u[n >= 2, 0]}

    groups_confirmed = labels_overlap(g, c)
    clusters_textual = labels_overlap(c, g)
    cluster_ids = sorted({int(k) for k in c[c >= 0]})
    clusters_no_text = [k for k in cluster_ids if k not in clusters_textual]

    ex_conf, ex_dedup = [], []
    for k, members in enumerate(dedup.groups):
        cl = c[members]
        if k in groups_confirmed and len(ex_conf) < examples:
            ex_conf.append(
                {
                    "group": k,
                    "members": members[:8],
                    "clusters": sorted({int(x) for x in cl if x >= 0}),
                }
            )
        # a pair of this group in no common cluster
        if len(ex_dedup) < examples:
            for i in range(len(members)):
                for j in range(i + 1, len(members)):
                    a, b = members[i], members[j]
                    if c[a] < 0 or c[a] != c[b]:
                        ex_dedup.append({"group": k, "pair": [a, b]})
                        break
                else:
                    continue
                break
    if evidence is not None and ex_dedup:
        for ex, ev in zip(ex_dedup, evidence(np.array([e["pair"] for e in ex_dedup])), strict=True):
            ex.update(ev)
    ex_infl = [
        {"cluster": k, "members": [int(m) for m in np.flatnonzero(c == k)[:8]]}
        for k in clusters_no_text[:examples]
    ]
    return {
        "method": dedup.method,
        "params": dedup.params,
        "dedup_groups": len(dedup.groups),
        "dedup_records": int((g >= 0).sum()),
        "dedup_pairs": dedup_pairs,
        "cluster_pairs": cluster_pairs,
        "confirmed": {"pairs": confirmed, "groups": len(groups_confirmed), "examples": ex_conf},
        "dedup_only": {
            "pairs": dedup_pairs - confirmed,
            "groups": len(dedup.groups) - len(groups_confirmed),
            "examples": ex_dedup,
        },
        "influence_only": {
            "pairs": cluster_pairs - confirmed,
            "clusters": len(clusters_no_text),
            "examples": ex_infl,
        },
    }
