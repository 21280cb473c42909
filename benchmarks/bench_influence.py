"""The analysis at scale: seconds against the matrix-product floor, and peak memory.

    python benchmarks/bench_influence.py [--records 20000] [--models 1000]

A synthetic N x M loss matrix with planted near-duplicate groups (so the findings have something
to find) goes through each step of the analysis that ``memaudit analyze`` and the report run:

* ``plain``: the difference-of-means estimator (influence, SE, top-k, margins);
* ``adjusted``: the regression-adjusted estimator, the default (covariates found in 2 rounds);
* ``findings``: what the report builds from the adjusted result: membership scores, links
  (link candidates, their joint fit, mutual links), clusters, risky unique records, the score
  against the planted groups, the planted-group summary and the flagged records' full rows.

Each step runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own; the inputs it
loads are part of it and are given separately. The floors are the float64 matrix products an
exact implementation of each step cannot avoid, timed blockwise (never an N x N array) in a
fresh subprocess before and after the steps; the ratio uses their mean:

* plain: F = (2N x M) @ (M x N), the first and second moments of L against P;
* adjusted: F + 2 H, where H = (N x M) @ (M x N): each covariate round ranks influencers, which
  needs the first moments of a new residual matrix against P; the final pass needs both;
* findings: H, the first moments of the strata-centred L that rank each target's link
  candidates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("plain", "adjusted", "findings")
BLOCK = 1000  # rows per block of the floor products


def synthetic(n: int, m: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Losses with self-influence 1 nat (noise sd 0.5) and planted groups of 2-5 records (10% of
    the records): a record's loss drops by 0.8 x the share of its group-mates a model trained on.
    Texts: 12 random words; each group copies its first record with one word replaced."""
    rng = np.random.default_rng(seed)
    inclusion = rng.random((n, m)) < 0.5
    sizes = rng.integers(2, 6, size=max(1, n // 35))
    sizes = sizes[np.cumsum(sizes) <= n // 10]
    members = np.split(rng.permutation(n)[: sizes.sum()], np.cumsum(sizes)[:-1])
    groups = np.full(n, -1, dtype=np.int64)
    losses = rng.normal(3.0, 0.5, (n, m)) - 1.0 * inclusion
    words = np.array([f"w{i}" for i in range(5000)])
    texts = rng.choice(words, size=(n, 12))
    for g, mem in enumerate(members):
        groups[mem] = g
        share = inclusion[mem].sum(axis=0)
        losses[mem] -= 0.8 * (share - inclusion[mem]) / (len(mem) - 1)
        texts[mem] = texts[mem[0]]
        texts[mem[1:], rng.integers(12, size=len(mem) - 1)] = rng.choice(words, len(mem) - 1)
    return {
        "losses": losses,
        "inclusion": inclusion,
        "groups": groups,
        "texts": np.array([" ".join(t) for t in texts]),
    }


def floor_products(losses: np.ndarray, inclusion: np.ndarray) -> dict[str, float]:
    """Seconds of F = (2N x M) @ (M x N) and H = (N x M) @ (M x N), in row blocks."""
    pt = inclusion.T.astype(np.float64)
    n = len(losses)
    out = {}
    for name, both in (("F", True), ("H", False)):
        t0 = time.perf_counter()
        for s in range(0, n, BLOCK):
            block = losses[s : s + BLOCK]
            (np.concatenate([block, block * block]) if both else block) @ pt
        out[name] = time.perf_counter() - t0
    return out


def run_step(step: str, data: Path, top_k: int) -> dict:
    """One measurement, in this (fresh) process."""
    from memaudit.analysis import group_summary
    from memaudit.estimators import influence_rows, run_estimator
    from memaudit.findings import (
        FindingsConfig,
        find_clusters,
        link_thresholds,
        membership_scores,
        risky_unique_records,
        score_against_groups,
    )
    from memaudit.influence import InfluenceResult
    from memaudit.records import Record

    d = {name: np.load(data / f"{name}.npy") for name in ("losses", "inclusion", "groups", "texts")}
    losses, inclusion = d["losses"], d["inclusion"]
    n, m = losses.shape
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info: dict = {}
    t0 = time.perf_counter()
    if step == "floor":
        info = floor_products(losses, inclusion)
    elif step in ("plain", "adjusted"):
        res = run_estimator(step, losses, inclusion, top_k=top_k)
        res.save(data / f"{step}.npz")
        info = {"self_influence_mean": float(np.nanmean(res.self_influence))}
    else:
        res = InfluenceResult.load(data / "adjusted.npz")
        groups, texts = d["groups"], [str(t) for t in d["texts"]]
        t0 = time.perf_counter()  # loading the result is not part of the step
        cfg = FindingsConfig()
        mia = membership_scores(losses, inclusion)
        clusters, cluster_of = find_clusters(
            res, texts, cfg, None, losses=losses, inclusion=inclusion
        )
        link_thresholds(cfg, n, m, adjusted=True)
        risky = risky_unique_records(res, cluster_of, cfg, None, mia["mia_auc"])
        labels = [None if g < 0 else f"g{g}" for g in groups]
        score = score_against_groups(cluster_of, labels)
        records = [Record(t, str(t), texts[t], None, labels[t], t) for t in range(n)]
        summary = group_summary(records, res)
        flagged = [i for c in clusters[: cfg.top_clusters] for i in c.members]
        flagged += [f.index for f in risky if f.index not in flagged]
        influence_rows(res.estimator, losses, inclusion, np.array(flagged))
        info = {
            "clusters": len(clusters),
            "links": sum(len(c.links) for c in clusters),
            "pair_precision": score["pair_precision"],
            "pair_recall": score["pair_recall"],
            "share_found": score["share_found"],
            "groups": score["groups"],
            "auc_margin": summary.get("auc_margin"),
            "risky_records": len(risky),
        }
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "inputs_rss_mb": loaded_mb, **info}


def measure(step: str, data: Path, top_k: int) -> dict:
    cmd = [sys.executable, __file__, "--step", step, "--data", str(data), "--top-k", str(top_k)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(step, json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--step", choices=("floor", *STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data, args.top_k)))
        return

    n, m = args.records, args.models
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        inputs = synthetic(n, m)
        for name, values in inputs.items():
            np.save(data / f"{name}.npy", values)
        inputs_mb = (inputs["losses"].nbytes + inputs["inclusion"].nbytes) / 2**20
        del inputs
        before = measure("floor", data, args.top_k)
        steps = {step: measure(step, data, args.top_k) for step in STEPS}
        after = measure("floor", data, args.top_k)
    f = (before["F"] + after["F"]) / 2
    h = (before["H"] + after["H"]) / 2
    floors = {"plain": f, "adjusted": f + 2 * h, "findings": h}
    for step in STEPS:
        steps[step]["floor_seconds"] = floors[step]
        steps[step]["ratio_to_floor"] = steps[step]["seconds"] / floors[step]
    total = sum(steps[s]["seconds"] for s in ("adjusted", "findings"))
    total_floor = floors["adjusted"] + floors["findings"]
    out = {
        "records": n,
        "models": m,
        "top_k": args.top_k,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0],
        "floor_before": before,
        "floor_after": after,
        "steps": steps,
        "analysis_seconds": total,
        "analysis_floor_seconds": total_floor,
        "analysis_ratio_to_floor": total / total_floor,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values()),
        "inputs_mb": inputs_mb,
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "influence.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
