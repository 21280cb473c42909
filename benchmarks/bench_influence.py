"""The estimator at scale: seconds against the matrix-product floor, and peak memory.

    python benchmarks/bench_influence.py [--records 20000] [--models 1000]

The floor is the float64 product that any exact estimator needs, (2N x M) @ (M x N) (first and
second moments against P), timed in the same process right after the estimator, so the ratio
is taken side by side on the same machine state.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from common import machine

from memaudit.influence import estimate

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=10)
    args = ap.parse_args()
    n, m = args.records, args.models
    rng = np.random.default_rng(0)
    inclusion = rng.random((n, m)) < 0.5
    losses = rng.normal(3.0, 1.0, (n, m)) - 1.0 * inclusion  # every record helps itself

    # The estimator first, so that the peak RSS is its own.
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = estimate(losses, inclusion, top_k=args.top_k)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert abs(res.self_influence.mean() - 1.0) < 0.05

    # The floor, in row blocks so that it never holds the N x N product either.
    pt = inclusion.T.astype(np.float64)
    t0 = time.perf_counter()
    for s in range(0, n, 1000):
        block = losses[s : s + 1000]
        np.concatenate([block, block**2]) @ pt
    floor = time.perf_counter() - t0

    out = {
        "records": n,
        "models": m,
        "top_k": args.top_k,
        "estimate_seconds": seconds,
        "matmul_floor_seconds": floor,
        "ratio_to_floor": seconds / floor,
        "peak_rss_mb": peak_mb,
        "rss_before_mb": base_rss / 1024,
        "inputs_mb": (losses.nbytes + inclusion.nbytes) / 2**20,
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "influence.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "influence.md").write_text(
        f"# Influence estimator at scale\n\n"
        f"{n:,} records x {m:,} models, top-{args.top_k}, synthetic losses; "
        f"{out['machine']['cpus']} CPUs, {out['machine']['platform']}.\n\n"
        "| estimate (s) | matmul floor (s) | ratio | peak RSS (MB) | inputs (MB) |\n"
        "|---:|---:|---:|---:|---:|\n"
        f"| {seconds:.1f} | {floor:.1f} | {seconds / floor:.2f} | {peak_mb:.0f} | "
        f"{out['inputs_mb']:.0f} |\n"
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
