"""What the link calibration costs at scale, against one estimate (memaudit.findings.calibration).

    nice -n 10 python benchmarks/calibration_cost.py [--records 20000] [--models 1000]

The synthetic ensemble of bench_influence.py (N = 20,000 records x M = 1,000 models by default,
planted near-duplicate groups of 2-5). Two steps, each in a fresh subprocess so that its peak
RSS (ru_maxrss) is its own:

* ``estimate``: one run of the default (regression-adjusted) estimator, the unit the budget is
  counted in;
* ``calibration``: calibrate_links with the default FindingsConfig on that estimate (above the
  exact-work line, so the budgeted path: floor(link_null_budget / SHUFFLE_COST) whole shuffles
  and a tail fit), timed in parts: the shuffles' estimator runs, their link statistics, the
  run's own link statistics (the fdr branch), and the rest (the shuffles themselves, the fits).

The cost of the exact path (all link_null_ensembles shuffles) is extrapolated from the measured
cost of one shuffle, not run (it would take about an hour here).

Writes results/calibration_cost.json and .md (``--markdown-only`` rewrites the .md).
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
from bench_influence import synthetic
from common import describe, machine

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("estimate", "calibration")


def run_step(step: str, data: Path, top_k: int) -> dict:
    from memaudit.config import FindingsConfig
    from memaudit.estimate.influence import InfluenceResult
    from memaudit.estimate.registry import get_estimator

    losses = np.load(data / "losses.npy")
    inclusion = np.load(data / "inclusion.npy")
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = [os.getloadavg()[0]]
    if step == "estimate":
        t0 = time.perf_counter()
        res = get_estimator("adjusted").estimate(losses, inclusion, top_k=top_k)
        seconds = time.perf_counter() - t0
        res.save(data / "adjusted.npz")
        info: dict = {}
    else:
        from memaudit.findings import calibration as cal

        res = InfluenceResult.load(data / "adjusted.npz")
        parts = {"shuffle_estimates": 0.0, "shuffle_link_statistics": 0.0, "run_link_stats": 0.0}
        calls = {"estimates": 0, "link_statistics": 0}
        estimator = get_estimator(res.estimator)
        plain_estimate, plain_stats = type(estimator).estimate, cal.link_statistics

        def timed_estimate(self, *args, **kwargs):
            t = time.perf_counter()
            out = plain_estimate(self, *args, **kwargs)
            parts["shuffle_estimates"] += time.perf_counter() - t
            calls["estimates"] += 1
            return out

        def timed_stats(result, *args, **kwargs):
            t = time.perf_counter()
            out = plain_stats(result, *args, **kwargs)
            key = "run_link_stats" if result is res else "shuffle_link_statistics"
            parts[key] += time.perf_counter() - t
            calls["link_statistics"] += 1
            return out

        type(estimator).estimate = timed_estimate
        cal.link_statistics = timed_stats
        cfg = FindingsConfig()
        t0 = time.perf_counter()
        calibration = cal.calibrate_links(res, cfg, losses, inclusion)
        seconds = time.perf_counter() - t0
        parts["rest"] = seconds - sum(parts.values())
        info = {
            "parts_seconds": parts,
            "calls": calls,
            "link_calibration": calibration.to_json(),
            "shuffle_cost_model": cal.SHUFFLE_COST,
            "budget": cfg.link_null_budget,
            "requested_shuffles": cfg.link_null_ensembles,
        }
    load.append(os.getloadavg()[0])
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "libraries_and_inputs_rss_mb": loaded_mb,
        "load_average_1min": load,
        **info,
    }


def measure(step: str, data: Path, top_k: int) -> dict:
    cmd = [sys.executable, __file__, "--step", step, "--data", str(data), "--top-k", str(top_k)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    print(step, json.dumps(result)[:400], flush=True)
    return result


def summary(out: dict) -> dict:
    """Calibration in estimates, per shuffle, and the exact path's extrapolated cost."""
    est, cal = out["steps"]["estimate"], out["steps"]["calibration"]
    shuffles = cal["link_calibration"]["replicates"]
    parts = cal["parts_seconds"]
    per_shuffle = (cal["seconds"] - parts["run_link_stats"]) / shuffles
    return {
        "shuffles": shuffles,
        "calibration_estimates": cal["seconds"] / est["seconds"],
        "shuffle_estimates": per_shuffle / est["seconds"],
        "exact_path_estimates": cal["requested_shuffles"] * per_shuffle / est["seconds"],
        "exact_path_seconds": cal["requested_shuffles"] * per_shuffle,
    }


def markdown(out: dict) -> str:
    est, cal, s = out["steps"]["estimate"], out["steps"]["calibration"], out["summary"]
    lc = cal["link_calibration"]
    approx = lc.get("approximation") or {}
    tails = approx.get("tails", {})
    parts = cal["parts_seconds"]
    loads = est["load_average_1min"] + cal["load_average_1min"]

    def tail_line(rule: str) -> str:
        t = tails.get(rule)
        if not t or t["tail_start"] is None:
            return f"{rule}: no tail ({t['null_statistics'] if t else 0} null statistics)"
        return (
            f"{rule}: {t['null_statistics']:,} null statistics, tail from {t['tail_start']:.2f} "
            f"({t['exceedances']} exceedances), shape {t['shape']:.3f} (fitted "
            f"{'-' if t['shape_fitted'] is None else format(t['shape_fitted'], '.3f')}), "
            f"scale {t['scale']:.3f}"
        )

    mutual = lc.get("mutual_rule") or {}
    return "\n".join(
        [
            "# Link calibration at scale",
            "",
            f"{out['records']:,} records x {out['models']:,} models, top-{out['top_k']}, the "
            "synthetic ensemble of bench_influence.py; default FindingsConfig (link_null_budget "
            f"{cal['budget']:g} estimates, {cal['requested_shuffles']} shuffles asked for). "
            f"{describe(out['machine'], tuple(loads[-1:]))} 1-minute load average "
            f"{min(loads):.1f}-{max(loads):.1f} during the steps (a shared machine: seconds vary "
            "run to run).",
            "",
            "| step | seconds | estimates | peak RSS (MB) |",
            "|---|---:|---:|---:|",
            f"| one estimate (adjusted) | {est['seconds']:.1f} | 1.00 | {est['peak_rss_mb']:.0f} |",
            f"| calibration, budgeted ({s['shuffles']} shuffles + tail fit) | "
            f"{cal['seconds']:.1f} | {s['calibration_estimates']:.2f} | "
            f"{cal['peak_rss_mb']:.0f} |",
            f"| calibration, exact ({cal['requested_shuffles']} shuffles; extrapolated, not run)"
            f" | {s['exact_path_seconds']:.0f} | {s['exact_path_estimates']:.1f} | |",
            "",
            f"Calibration's parts: the shuffles' estimator runs {parts['shuffle_estimates']:.1f} s"
            f", their link statistics {parts['shuffle_link_statistics']:.1f} s, the run's own "
            f"link statistics (the fdr branch) {parts['run_link_stats']:.1f} s, the rest (the "
            f"shuffles themselves, the tail fits) {parts['rest']:.1f} s. One shuffle costs "
            f"{s['shuffle_estimates']:.2f} estimates (the cost model counts "
            f"{cal['shuffle_cost_model']:g}).",
            "",
            f"Thresholds: z rule {lc['z_rule']['threshold']:.2f} (analytic "
            f"{lc['z_rule']['analytic']:.2f}, null "
            f"{'-' if lc['z_rule']['null'] is None else format(lc['z_rule']['null'], '.2f')}); "
            "mutual rule "
            + ("-" if mutual.get("threshold") is None else f"{mutual['threshold']:.2f}")
            + ". Tails: "
            + "; ".join(tail_line(r) for r in ("z", "mutual"))
            + (
                ". Fallbacks: " + "; ".join(f"{k}: {v}" for k, v in approx["fallback"].items())
                if approx.get("fallback")
                else ""
            )
            + ".",
            "",
            "Both steps grow like N^2 M (matrix products; the rest is linear in N and M), so "
            "the cost in estimates carries to other M."
            + (f" {out['note']}" if out.get("note") else ""),
            "",
            "Peak RSS is each step's own (a fresh process, ru_maxrss), libraries and inputs "
            f"included (about {est['libraries_and_inputs_rss_mb']:.0f} MB before the step).",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "calibration_cost.json")
    ap.add_argument("--markdown-only", action="store_true")
    ap.add_argument("--note", default="", help="a sentence for the table (why this size)")
    args = ap.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.data, args.top_k)))
        return
    if args.markdown_only:
        out = json.loads(args.out.read_text())
        if args.note:
            out["note"] = args.note
            args.out.write_text(json.dumps(out, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        inputs = synthetic(args.records, args.models)
        for name in ("losses", "inclusion"):
            np.save(data / f"{name}.npy", inputs[name])
        del inputs
        steps = {step: measure(step, data, args.top_k) for step in STEPS}
    out = {
        "records": args.records,
        "models": args.models,
        "top_k": args.top_k,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "steps": steps,
        "machine": machine(),
        "note": args.note,
    }
    out["summary"] = summary(out)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(out))
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
