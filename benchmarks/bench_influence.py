"""The analysis at scale: seconds against the matrix-product floor, and peak memory.

    python benchmarks/bench_influence.py [--records 20000] [--models 1000]

A synthetic N x M loss matrix with planted near-duplicate groups (so the findings have something
to find) goes through each step of the analysis that ``memaudit analyze`` and the report run:

* ``plain``: the difference-of-means estimator (influence, SE, top-k, margins);
* ``adjusted``: the regression-adjusted estimator, the default (covariates found in 2 rounds);
* ``findings``: what the report builds from the adjusted result: membership scores, links
  (link candidates, their joint fit, mutual links), clusters, risky unique records, the score
  against the planted groups, the planted-group summary and the flagged records' full rows.
  Without the link calibration (FindingsConfig.link_null_ensembles): find_clusters runs on the
  analytic thresholds here, so ``findings`` is not what ``memaudit analyze`` spends on the
  findings stage; the calibration's null shuffles (about 3 estimates at this size under the
  default link_null_budget) are measured by calibration_cost.py.

Each step runs in a fresh subprocess, so its peak RSS (ru_maxrss, read as soon as the step
ends) is its own; the libraries and the inputs it loads are part of it and are given
separately. Right after the step, the same subprocess times the float64 matrix products an exact
implementation of that step cannot avoid (blockwise, never an N x N array), so each ratio is
taken side by side on the same machine state (the machine is shared; see the json's load):

* plain: F = (2N x M) @ (M x N), the first and second moments of L against P;
* adjusted: F + 2 H, where H = (N x M) @ (M x N): each of the 2 covariate rounds ranks
  influencers, which needs the first moments of a new residual matrix against P; the final pass
  needs both moments;
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
    """Seconds of F = (2N x M) @ (M x N) and H = (N x M) @ (M x N), in row blocks, the two
    interleaved block by block so that both see the same load on a shared machine."""
    pt = inclusion.T.astype(np.float64)
    out = {"F": 0.0, "H": 0.0}
    for s in range(0, len(losses), BLOCK):
        block = losses[s : s + BLOCK]
        t0 = time.perf_counter()
        np.concatenate([block, block * block]) @ pt
        t1 = time.perf_counter()
        block @ pt
        out["F"] += t1 - t0
        out["H"] += time.perf_counter() - t1
    return out


def run_step(step: str, data: Path, top_k: int) -> dict:
    """One measurement, in this (fresh) process."""
    from memaudit.config import FindingsConfig
    from memaudit.data.records import Record
    from memaudit.estimate.analysis import group_summary
    from memaudit.estimate.influence import InfluenceResult
    from memaudit.estimate.registry import get_estimator
    from memaudit.findings.clusters import find_clusters, link_thresholds
    from memaudit.findings.ground_truth import score_against_groups
    from memaudit.findings.membership import membership_scores
    from memaudit.findings.risky import risky_unique_records

    d = {name: np.load(data / f"{name}.npy") for name in ("losses", "inclusion", "groups", "texts")}
    losses, inclusion = d["losses"], d["inclusion"]
    n, m = losses.shape
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info: dict = {}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if step in ("plain", "adjusted"):
        res = get_estimator(step).estimate(losses, inclusion, top_k=top_k)
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
        get_estimator(res.estimator).rows(losses, inclusion, np.array(flagged))
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
    del res
    products = floor_products(losses, inclusion)
    floor = {"plain": products["F"], "adjusted": products["F"] + 2 * products["H"]}
    floor_seconds = floor.get(step, products["H"])
    return {
        "seconds": seconds,
        "floor_seconds": floor_seconds,
        "ratio_to_floor": seconds / floor_seconds,
        "peak_rss_mb": peak_mb,
        "libraries_and_inputs_rss_mb": loaded_mb,
        "products": products,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        **info,
    }


FLOORS = {"plain": "F", "adjusted": "F + 2H", "findings": "H"}
SAME = ("clusters", "links", "pair_precision", "pair_recall", "share_found", "risky_records")


def markdown(out: dict, before: dict | None, before_label: str = "an earlier version") -> str:
    mach, steps = out["machine"], out["steps"]
    f = steps["findings"]
    rows = [(name, steps[name], (before or {}).get("steps", {}).get(name)) for name in STEPS]
    whole = {
        "seconds": out["analysis_seconds"],
        "floor_seconds": out["analysis_floor_seconds"],
        "ratio_to_floor": out["analysis_ratio_to_floor"],
        "peak_rss_mb": max(steps[s]["peak_rss_mb"] for s in ("adjusted", "findings")),
    }
    old_whole = None
    if before:
        old_whole = {
            "seconds": before["analysis_seconds"],
            "ratio_to_floor": before["analysis_ratio_to_floor"],
            "peak_rss_mb": max(before["steps"][s]["peak_rss_mb"] for s in ("adjusted", "findings")),
        }
    rows.append(("analysis = adjusted + findings", whole, old_whole))
    head = "| step | seconds | floor (s) | floor | ratio | peak RSS (MB) |"
    rule = "|---|---:|---:|---|---:|---:|"
    if before:
        head += " before: seconds | before: ratio | before: peak RSS (MB) |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for name, r, b in rows:
        line = (
            f"| {name} | {r['seconds']:.1f} | {r['floor_seconds']:.1f} | "
            f"{FLOORS.get(name, 'F + 3H')} | {r['ratio_to_floor']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
        if before:
            line += (
                f" {b['seconds']:.1f} | {b['ratio_to_floor']:.2f} | {b['peak_rss_mb']:.0f} |"
                if b
                else " | | |"
            )
        lines.append(line)
    loads = [x for s in steps.values() for x in s["load_average_1min"]]
    return "\n".join(
        [
            "# The analysis at scale",
            "",
            f"{out['records']:,} records x {out['models']:,} models, top-{out['top_k']}, "
            f"synthetic losses with {f['groups']} planted near-duplicate groups of 2-5 records; "
            f"`OMP_NUM_THREADS={out['omp_num_threads']}`; {mach['cpus']} CPUs "
            f"({mach['processor']}), numpy {mach['numpy']}. The machine was shared with other "
            f"jobs: 1-minute load average {min(loads):.1f}-{max(loads):.1f} during the steps, "
            "so absolute seconds vary from run to run; each ratio divides by products timed in "
            "the same process right after the step.",
            "",
            *lines,
            "",
            "Floors (float64, blockwise): F = (2N x M) @ (M x N), the first and second moments "
            "of L against P that any exact difference of means with standard errors needs; "
            "H = (N x M) @ (M x N), first moments only. The adjusted estimator needs F + 2H "
            "(each of its 2 covariate rounds ranks influencers on a new residual matrix; the "
            "final pass needs both moments); the findings need H (the strata-centred L that "
            "ranks each target's link candidates); the rest of their work is linear in N. "
            f"Timed after the plain step: F = {steps['plain']['products']['F']:.1f} s, "
            f"H = {steps['plain']['products']['H']:.1f} s.",
            "",
            "Against the plain estimator's single product F (timed after the plain step), the "
            f"whole default analysis takes {out['analysis_seconds']:.1f} / "
            f"{steps['plain']['products']['F']:.1f} = "
            f"{out['analysis_seconds'] / steps['plain']['products']['F']:.1f}x: the adjusted "
            "estimator and the findings need about 2.5x the product of the plain estimator by "
            "construction.",
            "",
            *(
                [
                    f"Before: the same script on {before_label}, run just before on the same "
                    "machine.",
                    "",
                ]
                if before
                else []
            ),
            "The findings step runs the link rules on their analytic thresholds, without the "
            "link calibration's null shuffles (measured in calibration_cost.md).",
            "",
            f"Findings: {f['clusters']} clusters, {f['links']} links, pair precision "
            f"{f['pair_precision']:.2f}, pair recall {f['pair_recall']:.2f}, "
            f"{f['share_found']:.0%} of the planted groups found; margin ROC AUC "
            f"planted vs unique {f['auc_margin']:.3f}"
            + (
                " (the same clusters, links and scores as before)."
                if before and all(before["steps"]["findings"][key] == f[key] for key in SAME)
                else "."
            ),
            "",
            "Peak RSS is each step's own (a fresh process, ru_maxrss); it includes the "
            f"libraries and the inputs (about {steps['plain']['libraries_and_inputs_rss_mb']:.0f}"
            f" MB before the step: L and P are {out['inputs_mb']:.0f} MB). A dense N x N "
            f"float64 would be {8 * out['records'] ** 2 / 2**20:,.0f} MB; nothing here holds "
            "more than a block of rows of it.",
            "",
        ]
    )


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
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "influence.json")
    ap.add_argument(
        "--before",
        type=Path,
        help="this benchmark's json from an earlier version of memaudit, shown beside",
    )
    ap.add_argument("--before-label", default="an earlier version", help="what --before ran")
    ap.add_argument(
        "--markdown-only",
        action="store_true",
        help="rewrite the markdown from the json at --out (and --before) without measuring",
    )
    args = ap.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data, args.top_k)))
        return

    before = json.loads(args.before.read_text()) if args.before else None
    if args.markdown_only:
        out = json.loads(args.out.read_text())
        args.out.with_suffix(".md").write_text(markdown(out, before, args.before_label))
        return

    n, m = args.records, args.models
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        inputs = synthetic(n, m)
        for name, values in inputs.items():
            np.save(data / f"{name}.npy", values)
        inputs_mb = (inputs["losses"].nbytes + inputs["inclusion"].nbytes) / 2**20
        del inputs
        steps = {step: measure(step, data, args.top_k) for step in STEPS}
    total = sum(steps[s]["seconds"] for s in ("adjusted", "findings"))
    total_floor = sum(steps[s]["floor_seconds"] for s in ("adjusted", "findings"))
    out = {
        "records": n,
        "models": m,
        "top_k": args.top_k,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "steps": steps,
        "analysis_seconds": total,
        "analysis_floor_seconds": total_floor,
        "analysis_ratio_to_floor": total / total_floor,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values()),
        "inputs_mb": inputs_mb,
        "machine": machine(),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(out, before, args.before_label))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
