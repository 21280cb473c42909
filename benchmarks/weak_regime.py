"""Link rules before and after the null calibration (issues #19, #14), in one command:

    python benchmarks/weak_regime.py [RUN_DIR ...]

A. False links on null ensembles (no cross-record effect) of several shapes: the share of runs
   with any link, uncalibrated (the analytic z threshold, the mutual rule on its selection
   alone) and calibrated (39 within-strata shuffles, link_fwer 0.05).
B. Synthetic saturating near-duplicate groups of 2-6 copies at M = 16, 32, 64: pair precision,
   recall and groups found, before and after.
C. Each RUN_DIR (a finished `memaudit run` with planted groups) re-analysed on its first M
   models for M = 16, 32, 48, ... up to all: the same scores against the planted groups, and
   the headline verdict. Nothing is trained here.

Writes benchmarks/results/weak_regime.json and .md (with the machine).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memaudit.config import FindingsConfig  # noqa: E402
from memaudit.estimate.adjusted import estimate_adjusted  # noqa: E402
from memaudit.estimate.registry import get_estimator  # noqa: E402
from memaudit.findings.calibration import calibrate_links  # noqa: E402
from memaudit.findings.clusters import find_cluster_sets, find_clusters, find_links  # noqa: E402
from memaudit.findings.ground_truth import score_against_groups  # noqa: E402
from memaudit.findings.verdict import pair_threshold, signal_verdict  # noqa: E402
from memaudit.store.rundir import RunDir  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
CFG = FindingsConfig()
OLD = replace(CFG, link_null_ensembles=0)
SHAPES = [  # (records, models, self-effect range in nats, loss noise)
    (60, 16, (0.05, 0.3), 0.5),
    (150, 32, (0.001, 0.003), 0.002),
    (150, 32, (3.0, 5.0), 0.5),
    (100, 64, (0.0, 1.0), 0.5),
]


def _null(seed, n, m, effect, noise):
    rng = np.random.default_rng(seed)
    inclusion = rng.random((n, m)) < 0.5
    drop = rng.uniform(*effect, size=(n, 1))
    losses = rng.normal(3.0, 0.3, size=(n, 1)) + rng.normal(0.0, noise, size=(n, m))
    return losses - drop * inclusion, inclusion


def _groups(seed, m, n_unique=60, sizes=(2, 3, 4, 5, 6, 2, 3, 4)):
    """Saturating groups (tests/findings/test_build.py's model): the drop is
    1 - prod(1 - w_s P_s) of the target's full drop, w = 0.9 for itself, 0.6 per copy."""
    rng = np.random.default_rng(seed)
    groups = [None] * n_unique + [f"g{g}" for g, s in enumerate(sizes) for _ in range(s)]
    n = len(groups)
    inclusion = rng.random((n, m)) < 0.5
    drop = rng.uniform(3.0, 5.0, size=n)
    losses = 6.0 + rng.normal(0.0, 0.5, size=(n, m))
    grp = np.array([g or "" for g in groups])
    for t in range(n):
        mates = np.flatnonzero((grp == grp[t]) & (grp[t] != "") & (np.arange(n) != t))
        kept = (1 - 0.9 * inclusion[t]) * np.prod(1 - 0.6 * inclusion[mates], axis=0)
        losses[t] -= drop[t] * (1 - kept)
    return losses, inclusion, groups


def _clusters(res, texts, losses, inclusion, mask, calibrated, covariates=4):
    if not calibrated:
        return find_clusters(res, texts, OLD, losses=losses, inclusion=inclusion, model_mask=mask)
    cal = calibrate_links(res, CFG, losses, inclusion, mask, covariates=covariates)
    # The findings stage's way: near-duplicate clusters from links between records that look
    # alike, the others apart (clusters.find_cluster_sets).
    found = find_cluster_sets(
        res,
        texts,
        CFG,
        losses=losses,
        inclusion=inclusion,
        model_mask=mask,
        z_threshold=cal.z_threshold,
        mutual_threshold=cal.mutual_threshold,
        strict_thresholds=(cal.z_strict, cal.mutual_strict),
    )
    return found.clusters, found.cluster_of, cal, found.influence


def part_a(runs: int) -> list[dict]:
    rows = []
    for n, m, effect, noise in SHAPES:
        before = after = 0
        for seed in range(runs):
            losses, inclusion = _null(1000 + seed, n, m, effect, noise)
            res = estimate_adjusted(losses, inclusion, top_k=10)
            before += len(find_links(res, OLD, losses, inclusion)) > 0
            cal = calibrate_links(res, CFG, losses, inclusion, seed=seed)
            links = find_links(
                res,
                CFG,
                losses,
                inclusion,
                z_threshold=cal.z_threshold,
                mutual_threshold=cal.mutual_threshold,
            )
            after += len(links) > 0
        rows.append(
            {"records": n, "models": m, "effect": list(effect), "noise": noise, "runs": runs,
             "runs_with_false_link_before": before, "runs_with_false_link_after": after}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def part_b(seeds: int) -> list[dict]:
    rows = []
    for m in (16, 32, 64):
        for calibrated in (False, True):
            scores = []
            for seed in range(seeds):
                losses, inclusion, groups = _groups(50 + seed, m)
                # Copies look alike, as near-duplicates do; unique records share nothing.
                texts = [
                    f"copy of group {g} text" if g else f"unique {k * 7919 % 10007} {k}"
                    for k, g in enumerate(groups)
                ]
                res = estimate_adjusted(losses, inclusion, top_k=10)
                out = _clusters(res, texts, losses, inclusion, None, calibrated)
                scores.append(score_against_groups(out[1], groups))
            rows.append({"models": m, "calibrated": calibrated, **_mean_scores(scores)})
            print(rows[-1], flush=True)
    return rows


def _mean_scores(scores: list[dict]) -> dict:
    prec = [1.0 if s["pair_precision"] is None else s["pair_precision"] for s in scores]
    return {
        "pair_precision_mean": float(np.mean(prec)),
        "pair_precision_worst": float(np.min(prec)),
        "pair_recall": float(np.mean([s["pair_recall"] for s in scores])),
        "groups_found": float(np.mean([s["share_found"] for s in scores])),
        "runs": len(scores),
    }


def _load(path: str):
    """(run, inclusion, losses with NaN as 0, valid models, texts, planted groups)."""
    run = RunDir(path)
    records = run.records()
    inclusion = run.inclusion()
    losses, valid = run.collect_losses(len(records), inclusion.shape[1])
    texts = [r.text for r in records]
    return run, inclusion, np.nan_to_num(losses), valid, texts, [r.group for r in records]


def part_c(run_dirs: list[str]) -> list[dict]:
    rows = []
    for path in run_dirs:
        run, inclusion, losses, valid, texts, groups = _load(path)
        saved = run.read_config()["config"]
        total = int(valid.sum())
        for m in [k for k in (16, 32, 48, 64, 96, 128) if k < total] + [total]:
            mask = valid & (np.cumsum(valid) <= m)
            res = get_estimator("adjusted").estimate(losses, inclusion, top_k=10, model_mask=mask)
            row = {
                "run": Path(path).name,
                "finetune": saved["model"]["finetune"],
                "epochs": saved["train"]["epochs"],
                "lr": saved["train"]["lr"],
                "models": m,
            }
            for calibrated in (False, True):
                t0 = time.perf_counter()
                out = _clusters(res, texts, losses, inclusion, mask, calibrated)
                s = score_against_groups(out[1], groups)
                key = "after" if calibrated else "before"
                row[key] = {
                    "clusters": s["clusters"],
                    "clusters_pure": s["clusters_pure"],
                    "pair_precision": s["pair_precision"],
                    "pair_recall": s["pair_recall"],
                    "groups_found": s["groups_found"],
                    "groups": s["groups"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                if calibrated:
                    cal = out[2]
                    head = signal_verdict(
                        res, m, pair_threshold(cal.z_threshold, cal.mutual_threshold),
                        s["clusters"], CFG.link_fwer,
                    )  # fmt: skip
                    row["headline"] = {
                        k: head.get(k)
                        for k in ("strength", "share_significant", "median_self_influence",
                                  "median_self_z", "detectable_effect", "clusters_resolvable",
                                  "models_to_resolve")
                    }  # fmt: skip
                    row["thresholds"] = {"z": cal.z_threshold, "mutual": cal.mutual_threshold}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def part_d(run_dirs: list[str]) -> list[dict]:
    """Do the links found on the first M models replicate on the next M (independent models)?
    Per link, the pair's pooled z, (z[t, i] + z[i, t]) / sqrt(2), on the held-out models,
    split by whether the planted groups know the pair. A non-planted link that replicates as
    often as the planted ones is influence the planting does not know about, not noise."""
    from memaudit.findings.clusters import adjusted_influence

    rows = []
    for path in run_dirs:
        _, inclusion, losses, valid, texts, groups = _load(path)
        total = int(valid.sum())
        for m in (k for k in (32, 48, 64) if 2 * k <= total):
            found = valid & (np.cumsum(valid) <= m)
            held = valid & (np.cumsum(valid) > m) & (np.cumsum(valid) <= 2 * m)
            res = get_estimator("adjusted").estimate(losses, inclusion, top_k=10, model_mask=found)
            clusters, _, _, influence = _clusters(res, texts, losses, inclusion, found, True)
            # Every link, the near-duplicate clusters' and the influence clusters'.
            pairs = {(lk.target, lk.source) for c in clusters + influence for lk in c.links}
            kinds: dict[str, list[float]] = {"planted": [], "other": []}
            for t, i in sorted(pairs):
                a, se = adjusted_influence(
                    losses, inclusion, np.array([t, i]), np.array([i, t]), held
                )
                z = float((a[0] / se[0] + a[1] / se[1]) / np.sqrt(2))
                planted = groups[t] is not None and groups[t] == groups[i]
                kinds["planted" if planted else "other"].append(z)
            row = {"run": Path(path).name, "models": m, "held_out_models": int(held.sum())}
            for kind, zs in kinds.items():
                v = np.array(zs)
                row[kind] = {
                    "links": len(v),
                    "median_z": float(np.median(v)) if len(v) else None,
                    "share_z_above_2": float((v > 2).mean()) if len(v) else None,
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _f(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(doc: dict) -> str:
    lines = [
        "# Link rules before and after the null calibration (#19)",
        "",
        f"Machine: {doc['machine']}. Command: `python benchmarks/weak_regime.py "
        + " ".join(doc["run_dirs"])
        + "`.",
        "",
        "The run directories quoted: new-run = `memaudit run fixtures/demo/nq_demo.jsonl "
        "--config fixtures/demo/demo.toml` (the strong demo, 32 models); weak-run = `memaudit "
        "run fixtures/demo/nq_demo.jsonl --model fixtures/tiny-gpt-neo --preset nq --models "
        "128 --max-length 64` (the #19 command at 128 models; LoRA defaults). Part C's "
        "'before' is link_null_ensembles = 0 and one graph of every link (no calibration, no "
        "separation of links between dissimilar records); 'after' is the findings stage's "
        "rules (calibrated, near-duplicate clusters from links between records that look "
        "alike).",
        "",
        "## A. Runs with any false link on null ensembles (no cross-record effect)",
        "",
        "Stated level: family-wise 0.05 over both rules (each rule <= 0.025 false links per run "
        "on 39 shuffles).",
        "",
        "| N | M | self-effect (nats) | noise | runs | before | after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["null"]:
        lines.append(
            f"| {r['records']} | {r['models']} | {r['effect'][0]:g}-{r['effect'][1]:g} | "
            f"{r['noise']:g} | {r['runs']} | {r['runs_with_false_link_before']} | "
            f"{r['runs_with_false_link_after']} |"
        )
    lines += [
        "",
        "## B. Synthetic saturating groups (60 unique, 8 groups of 2-6 copies whose texts are "
        "alike)",
        "",
        "| M | rules | pair precision mean (worst) | pair recall | groups found |",
        "|---|---|---|---|---|",
    ]
    for r in doc["groups"]:
        lines.append(
            f"| {r['models']} | {'calibrated' if r['calibrated'] else 'before'} | "
            f"{_f(r['pair_precision_mean'])} ({_f(r['pair_precision_worst'])}) | "
            f"{_f(r['pair_recall'])} | {_f(r['groups_found'])} |"
        )
    lines += [
        "",
        "## C. Real runs, first M models (pair precision / recall, clusters pure / all, "
        "groups found of 20)",
        "",
        "| run | fine-tuning | M | before | after | headline | z / mutual threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        cells = []
        for key in ("before", "after"):
            s = r[key]
            cells.append(
                f"{_f(s['pair_precision'])} / {_f(s['pair_recall'])}, {s['clusters_pure']}/"
                f"{s['clusters']} pure, {s['groups_found']} found"
            )
        h = r["headline"]
        head = (
            f"{h['strength']}: median {h['median_self_influence']:.2g} nats, "
            f"{100 * h['share_significant']:.0f}% significant, "
            + ("resolvable" if h["clusters_resolvable"] else f"~{h['models_to_resolve']} models")
        )
        thr = r["thresholds"]
        mutual = "–" if thr["mutual"] is None else f"{thr['mutual']:.2f}"
        lines.append(
            f"| {r['run']} | {r['finetune']}, {r['epochs']} ep, lr {r['lr']:g} | {r['models']} | "
            f"{cells[0]} | {cells[1]} | {head} | {thr['z']:.2f} / {mutual} |"
        )
    if doc.get("replication"):
        lines += [
            "",
            "## D. Do links replicate on independent models?",
            "",
            "Links found on the first M models, each pair's pooled z on the next M models "
            "(independent); planted = the pair is in one planted group.",
            "",
            "| run | M | planted links: n, median z, share z > 2 | other links: n, median z, "
            "share z > 2 |",
            "|---|---|---|---|",
        ]
        for r in doc["replication"]:
            cells = [
                f"{r[k]['links']}, {_f(r[k]['median_z'])}, {_f(r[k]['share_z_above_2'])}"
                for k in ("planted", "other")
            ]
            lines.append(f"| {r['run']} | {r['models']} | {cells[0]} | {cells[1]} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--markdown"]:
        # Re-render the markdown from the committed JSON.
        (OUT / "weak_regime.md").write_text(
            markdown(json.loads((OUT / "weak_regime.json").read_text()))
        )
        return
    run_dirs = sys.argv[1:]
    quick = os.environ.get("QUICK") == "1"
    doc = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(shared with other jobs), numpy " + np.__version__,
        "run_dirs": run_dirs,
        "null": part_a(4 if quick else 12),
        "groups": part_b(2 if quick else 4),
        "runs": part_c(run_dirs),
        "replication": part_d(run_dirs),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "weak_regime.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (OUT / "weak_regime.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
