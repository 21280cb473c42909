"""Reduced-M accuracy: how close do few models come to a large reference ensemble?

    python benchmarks/reduced_m.py [--ref-models 1000] [--use-available]

The reference task: the first 120 NQ-open questions of fixtures/demo/nq_source.jsonl (not in the
tiny model's pretraining data), with 24 planted groups of 2 to 5 copies and 1 to 3 replaced
tokenizer tokens per copy (183 records), trained as the bundled demo is (fixtures/demo/demo.toml).
The ensemble is cached in benchmarks/cache/ and resumes like any memaudit run, so the command can
be stopped and rerun; --use-available evaluates whatever models are finished.

Models 0..127 are the candidate pool (--pool); every M in {8, 16, 32, 64, 128} uses its first M
models, and the reference is every later model (up to 872 of the 1,000), so candidate and
reference never share a model. Training all 1,000 takes about 2 hours on 2 idle cores
(`memaudit train benchmarks/cache/reference-bernoulli --shard I/K` splits it over machines).
For each M and each estimator (plain difference of means, regression-adjusted) it reports:
Spearman correlation of self-influence and of the margin with the reference (same estimator),
ROC AUC of the margin and of self-influence for separating planted near-duplicates from unique
records, cluster pair precision/recall and groups found against the planted groups and against
the reference's clusters, agreement (Jaccard) of the flagged records with the reference, and the
compute spent.
It replays `--models auto` (memaudit's rounds, 16, 32, 48, 64, ..., and its stopping rule)
on the pool, and reproduces the paper's table on the reference ensemble.

Partition designs: a second, 64-model ensemble in the complementary-pairs design
(--complementary-models) gives the same grid up to 64, against the same Bernoulli reference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import machine
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from memaudit.config import FindingsConfig
from memaudit.convergence.adaptive import round_sizes
from memaudit.convergence.diagnostics import ConvergenceConfig, diagnose, split_half_reliability
from memaudit.estimate.registry import get_estimator
from memaudit.findings.build import extraction_metrics
from memaudit.findings.clusters import find_clusters
from memaudit.findings.ground_truth import score_against_groups
from memaudit.findings.membership import membership_scores
from memaudit.findings.risky import risky_unique_records
from memaudit.store.rundir import RunDir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
POOL = 128
M_GRID = (8, 16, 32, 64, 128)
ESTIMATORS = ("plain", "adjusted")
PAPER = {"self_influence": 2.8, "bleu": 5.2, "margin": 7.0}  # unique/dup, dup/unique, unique/dup


def prepare() -> Path:
    from memaudit.data import plant
    from memaudit.data.records import RecordFormat
    from memaudit.ensemble.models import load_tokenizer

    data = CACHE / "reference.jsonl"
    if data.exists():
        return data
    CACHE.mkdir(parents=True, exist_ok=True)
    source = CACHE / "source.jsonl"
    lines = (ROOT / "fixtures/demo/nq_source.jsonl").read_text().splitlines(keepends=True)
    source.write_text("".join(lines[:120]))
    tok = load_tokenizer(str(ROOT / "fixtures/tiny-gpt-neo"))
    objects = plant.plant(
        source, RecordFormat("nq"), groups=24, copies=(2, 5), seed=0, tokenizer=tok, edits=(1, 3)
    )
    plant.write_jsonl(objects, data)
    return data


def train(data: Path, n_models: int, design: str = "bernoulli") -> Path:
    """The cached ensemble, resumed to n_models (a CLI subprocess, exactly as a user runs it)."""
    import subprocess
    import sys

    out = CACHE / ("reference-bernoulli" if design == "bernoulli" else f"reference-{design}")
    config = str(ROOT / "fixtures/demo/demo.toml")
    cmd = [sys.executable, "-m", "memaudit", "run", str(data), "--config", config,
           "--models", str(n_models), "--out", str(out), "--design", design]  # fmt: skip
    if design != "bernoulli":
        cmd += ["--extract-models", "0"]  # extractability comes from the Bernoulli ensemble
    subprocess.run(cmd, check=True)
    return out


def complementary_rows(ctx: dict, refs: dict, out: Path, per_model: float) -> list[dict]:
    """The grid for the complementary-pairs design (its own ensemble, same task), compared with
    the same Bernoulli reference."""
    run = RunDir(out)
    records = run.records()
    inclusion = run.inclusion()
    losses, valid = run.collect_losses(len(records), inclusion.shape[1])
    n_done = int(np.argmin(valid)) if not valid.all() else valid.size  # complete prefix
    ctx_c = dict(ctx, losses=losses[:, :n_done], inclusion=inclusion[:, :n_done])
    return grid_rows(ctx_c, refs, "complementary", n_done, per_model)


def grid_rows(ctx: dict, refs: dict, design: str, available: int, per_model: float) -> list[dict]:
    """One row per estimator and M in M_GRID (up to ``available``): the first M models of
    ``ctx`` against the reference of the same estimator."""
    rows = []
    for est in ESTIMATORS:
        for m in [m for m in M_GRID if m <= available]:
            one = evaluate_one(ctx, np.arange(m), est)
            rows.append(
                {
                    "estimator": est,
                    "design": design,
                    "models": m,
                    "train_seconds": round(m * per_model, 1),
                }
                | one["metrics"]
                | compare(one, refs[est])
            )
    return rows


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    ok = np.isfinite(scores)
    if len(set(labels[ok])) < 2:
        return None
    return float(roc_auc_score(labels[ok], scores[ok]))


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok])[0]) if ok.sum() > 2 else None


def _pairs(cluster_of: np.ndarray) -> set[tuple[int, int]]:
    out = set()
    for c in np.unique(cluster_of[cluster_of >= 0]):
        m = np.flatnonzero(cluster_of == c)
        out |= {(int(a), int(b)) for k, a in enumerate(m) for b in m[k + 1 :]}
    return out


def evaluate_one(ctx: dict, cols: np.ndarray, estimator: str) -> dict:
    """Every metric for the models ``cols`` with one estimator."""
    losses, inclusion, texts = ctx["losses"][:, cols], ctx["inclusion"][:, cols], ctx["texts"]
    res = get_estimator(estimator).estimate(losses, inclusion, top_k=10)
    clusters, cluster_of = find_clusters(
        res, texts, FindingsConfig(), ctx["bleu_gain"], losses=losses, inclusion=inclusion
    )
    mia = membership_scores(losses, inclusion)["mia_auc"]
    risky = risky_unique_records(res, cluster_of, FindingsConfig(), ctx["bleu_gain"], mia)
    flagged = {m for c in clusters for m in c.members} | {r.index for r in risky}
    margin = np.where(res.margin_defined, res.margin, np.nan)
    dup = ctx["dup"]
    return {
        "result": res,
        "cluster_of": cluster_of,
        "flagged": flagged,
        "metrics": {
            "auc_margin": _auc(~dup, np.where(res.margin_defined, res.margin, np.inf)),
            "auc_self_influence": _auc(~dup, res.self_influence),
            "margin_median_unique": float(np.nanmedian(margin[~dup])),
            "margin_median_near_dup": float(np.nanmedian(margin[dup])),
            "planted": score_against_groups(cluster_of, ctx["groups"]),
        },
    }


def compare(run: dict, ref: dict) -> dict:
    a, b = run["result"], ref["result"]
    ma = np.where(a.margin_defined, a.margin, np.nan)
    mb = np.where(b.margin_defined, b.margin, np.nan)
    pa, pb = _pairs(run["cluster_of"]), _pairs(ref["cluster_of"])
    fa, fb = run["flagged"], ref["flagged"]
    rel_self, rel_margin = ref.get("reliability", (None, None))
    s_self, s_margin = _spearman(a.self_influence, b.self_influence), _spearman(ma, mb)
    return {
        "spearman_self": s_self,
        "spearman_margin": s_margin,
        # Spearman's correction for attenuation by the reference's own noise (its split-half
        # reliability): an estimate of the correlation with an error-free (M -> inf) reference.
        "spearman_self_vs_true": _disattenuate(s_self, rel_self),
        "spearman_margin_vs_true": _disattenuate(s_margin, rel_margin),
        "cluster_precision_vs_ref": len(pa & pb) / len(pa) if pa else None,
        "cluster_recall_vs_ref": len(pa & pb) / len(pb) if pb else None,
        "flagged_jaccard": len(fa & fb) / len(fa | fb) if fa | fb else None,
    }


def _disattenuate(r: float | None, reliability: float | None) -> float | None:
    if r is None or not np.isfinite(r) or not reliability or reliability <= 0:
        return None
    return min(1.0, r / np.sqrt(reliability))


def replay_auto(ctx: dict, estimator: str, cfg: ConvergenceConfig, pool: int) -> dict:
    """--models auto on the pool: memaudit's rounds (16, 32, 48, 64, 80, ...); the first round
    never stops (stability needs two rounds); the cap is the pool."""
    previous = None
    rounds = []
    for m in round_sizes(16, pool):
        cols = np.arange(m)
        one = evaluate_one(ctx, cols, estimator)
        diag = diagnose(
            ctx["losses"][:, cols],
            ctx["inclusion"][:, cols],
            one["flagged"],
            previous=previous[0] if previous else None,
            previous_flagged=previous[1] if previous else None,
            cfg=cfg,
            result=one["result"],
            estimator=estimator,
        )
        rounds.append({c["name"]: c["value"] for c in diag.criteria} | {"models": m})
        if diag.converged:
            return {"stopped_at": m, "stopped_by": "converged", "rounds": rounds, "run": one}
        previous = (diag, one["flagged"])
    return {"stopped_at": m, "stopped_by": f"pool cap ({m})", "rounds": rounds, "run": one}


def paper_table(ctx: dict, ref: dict) -> dict:
    res, dup = ref["result"], ctx["dup"]
    margin = np.where(res.margin_defined, res.margin, np.nan)
    bleu = ctx["bleu_in"]

    def ms(v: np.ndarray) -> dict:
        v = v[np.isfinite(v)]
        return {"mean": float(v.mean()), "std": float(v.std())} if v.size else {}

    table = {
        name: {"unique": ms(v[~dup]), "near_duplicated": ms(v[dup])}
        for name, v in (("self_influence", res.self_influence), ("bleu", bleu), ("margin", margin))
    }
    mean = {k: {side: v[side].get("mean", np.nan) for side in v} for k, v in table.items()}
    ratio = {
        "self_influence": mean["self_influence"]["unique"]
        / mean["self_influence"]["near_duplicated"],
        "bleu": mean["bleu"]["near_duplicated"] / max(mean["bleu"]["unique"], 1e-9),
        "margin": mean["margin"]["unique"] / mean["margin"]["near_duplicated"],
    }
    return {"table": table, "ratios": ratio, "paper_ratios": PAPER}


def estimators_agree(ctx: dict, cols: np.ndarray) -> dict:
    """Validation of the adjusted estimator on the reference models: the same quantity as the
    plain difference of means (entries compared over the full N x N matrices)."""

    losses, inclusion = ctx["losses"][:, cols], ctx["inclusion"][:, cols]
    rows = np.arange(losses.shape[0])
    plain = get_estimator("plain").rows(losses, inclusion, rows)
    adj = get_estimator("adjusted").rows(losses, inclusion, rows)
    groups = np.array([g or "" for g in ctx["groups"]])
    mates = (
        (groups[:, None] == groups[None, :])
        & (groups[:, None] != "")
        & ~np.eye(len(rows), dtype=bool)
    )
    null = (groups[:, None] != groups[None, :]) | (groups[:, None] == "")
    null &= ~np.eye(len(rows), dtype=bool)
    return {
        "self_mean": [float(np.diag(plain).mean()), float(np.diag(adj).mean())],
        "self_pearson": float(np.corrcoef(np.diag(plain), np.diag(adj))[0, 1]),
        "mate_mean": [float(plain[mates].mean()), float(adj[mates].mean())],
        "mate_pearson": float(np.corrcoef(plain[mates], adj[mates])[0, 1]),
        "null_mean": [float(plain[null].mean()), float(adj[null].mean())],
        "null_std": [float(plain[null].std()), float(adj[null].std())],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-models", type=int, default=1000)
    ap.add_argument("--use-available", action="store_true", help="do not train; use what exists")
    ap.add_argument("--pool", type=int, default=POOL, help="candidate models (M grid up to it)")
    ap.add_argument(
        "--complementary-models",
        type=int,
        default=64,
        help="size of the complementary-design ensemble (0: skip the design comparison)",
    )
    args = ap.parse_args()
    pool = args.pool
    data = prepare()
    out = CACHE / "reference-bernoulli" if args.use_available else train(data, args.ref_models)
    run = RunDir(out)
    records = run.records()
    inclusion_all = run.inclusion()
    losses_all, valid = run.collect_losses(len(records), inclusion_all.shape[1])
    done = np.flatnonzero(valid)
    if done.size < pool + 16 or not valid[:pool].all():
        raise SystemExit(f"{done.size} models finished; need the first {pool} and 16 more")
    losses_all, inclusion_all = losses_all[:, done], inclusion_all[:, done]
    extraction, _ = extraction_metrics(run, run.inclusion())
    groups = [r.group for r in records]
    ctx = {
        "losses": losses_all,
        "inclusion": inclusion_all,
        "texts": [r.text for r in records],
        "groups": groups,
        "dup": np.array([g is not None for g in groups]),
        "bleu_gain": extraction.get("bleu_gain"),
        "bleu_in": extraction.get("bleu_in", np.full(len(records), np.nan)),
    }
    seconds = [run.model_meta(int(j))["train_seconds"] for j in done]
    per_model = float(np.median(seconds))
    ref_cols = np.arange(pool, done.size)
    t0 = time.perf_counter()
    refs = {e: evaluate_one(ctx, ref_cols, e) for e in ESTIMATORS}
    for e in ESTIMATORS:
        refs[e]["reliability"] = split_half_reliability(
            ctx["losses"][:, ref_cols], ctx["inclusion"][:, ref_cols], estimator=e
        )
    rows = grid_rows(ctx, refs, "bernoulli", pool, per_model)
    comp_dir = CACHE / "reference-complementary"
    if args.complementary_models and not args.use_available:
        comp_dir = train(data, args.complementary_models, "complementary")
    if args.complementary_models and (comp_dir / "inclusion.npy").exists():
        rows += complementary_rows(ctx, refs, comp_dir, per_model)
    auto = {}
    for est in ESTIMATORS:
        a = replay_auto(ctx, est, ConvergenceConfig(), pool)
        auto[est] = (
            {
                "stopped_at": a["stopped_at"],
                "stopped_by": a["stopped_by"],
                "rounds": a["rounds"],
                "train_seconds": round(a["stopped_at"] * per_model, 1),
            }
            | a["run"]["metrics"]
            | compare(a["run"], refs[est])
        )
    doc = {
        "task": {
            "records": len(records),
            "planted_groups": len({g for g in groups if g}),
            "near_duplicated_records": int(ctx["dup"].sum()),
            "data": str(data.relative_to(ROOT)),
            "config": "fixtures/demo/demo.toml",
        },
        "reference_models": int(ref_cols.size),
        "pool_models": pool,
        "seconds_per_model_median": round(per_model, 2),
        "reference": {
            e: refs[e]["metrics"] | {"reliability_self_margin": refs[e]["reliability"]}
            for e in ESTIMATORS
        },
        "grid": rows,
        "auto": auto,
        "paper_table": {e: paper_table(ctx, refs[e]) for e in ESTIMATORS},
        "estimators_agree": estimators_agree(ctx, ref_cols),
        "analysis_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reduced_m.json").write_text(json.dumps(doc, indent=2, default=_json) + "\n")
    (RESULTS / "reduced_m.md").write_text(markdown(doc))
    plot(doc, RESULTS / "reduced_m.png")
    print(markdown(doc))


def _json(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))


def _f(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(doc: dict) -> str:
    t = doc["task"]
    lines = [
        "# Reduced-M accuracy (benchmarks/reduced_m.py)",
        "",
        f"Reference task: {t['records']} records, {t['planted_groups']} planted groups of 2-5 "
        f"copies with 1-3 replaced tokens ({t['near_duplicated_records']} near-duplicated "
        f"records), tiny GPT-Neo as in the demo. Reference: {doc['reference_models']} models "
        f"disjoint from the {doc['pool_models']}-model pool the rows below draw from. "
        f"{doc['seconds_per_model_median']} s per model (median) on {doc['machine']['cpus']} "
        "CPUs.",
        "",
        "| estimator | design | M | Spearman self | Spearman margin | margin AUC | self AUC | "
        "pairs P/R (planted) | groups found | pairs P/R (vs ref) | flagged Jaccard | "
        "train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    entries = [(r["estimator"], r["design"], str(r["models"]), r) for r in doc["grid"]]
    entries += [(e, "bernoulli", f"auto→{a['stopped_at']}", a) for e, a in doc["auto"].items()]
    for est, design, m, r in entries:
        p = r["planted"]
        lines.append(
            f"| {est} | {design} | {m} | {_f(r['spearman_self'])} | {_f(r['spearman_margin'])} | "
            f"{_f(r['auc_margin'])} | {_f(r['auc_self_influence'])} | "
            f"{_f(p['pair_precision'])}/{_f(p['pair_recall'])} | {_f(p['share_found'])} | "
            f"{_f(r['cluster_precision_vs_ref'])}/{_f(r['cluster_recall_vs_ref'])} | "
            f"{_f(r['flagged_jaccard'])} | {r['train_seconds']:.0f} |"
        )
    lines += ["", "Reference ensemble, paper's table (mean ± std; ratios vs the paper's):", ""]
    lines += ["| estimator | metric | unique | near-duplicated | ratio | paper |"]
    lines += ["|---|---|---|---|---|---|"]
    for est, pt in doc["paper_table"].items():
        for name, row in pt["table"].items():
            u, d = row["unique"], row["near_duplicated"]
            lines.append(
                f"| {est} | {name} | {_f(u.get('mean'))} ± {_f(u.get('std'))} | "
                f"{_f(d.get('mean'))} ± {_f(d.get('std'))} | {_f(pt['ratios'][name], 1)}x | "
                f"{pt['paper_ratios'][name]:.1f}x |"
            )
    agree = doc["estimators_agree"]
    lines += [
        "",
        "Same quantity? Plain vs adjusted on the reference models (full N x N matrices): "
        f"self-influence mean {agree['self_mean'][0]:.3f} vs {agree['self_mean'][1]:.3f} "
        f"(Pearson {agree['self_pearson']:.3f}); planted-mate entries mean "
        f"{agree['mate_mean'][0]:.3f} vs {agree['mate_mean'][1]:.3f} (Pearson "
        f"{agree['mate_pearson']:.3f}); all other off-diagonal entries mean "
        f"{agree['null_mean'][0]:.4f} vs {agree['null_mean'][1]:.4f}, spread (std) "
        f"{agree['null_std'][0]:.3f} vs {agree['null_std'][1]:.3f}.",
    ]
    lines += [
        "",
        "The reference is noisy too, which caps every correlation with it: its split-half "
        "reliability (self-influence, margin) is "
        + "; ".join(
            f"{e} {_f(r['reliability_self_margin'][0])}, {_f(r['reliability_self_margin'][1])}"
            for e, r in doc["reference"].items()
        )
        + ". Corrected for it (Spearman's correction, r / sqrt(reliability of the reference), an "
        "estimate of the correlation with an M -> infinity reference), Spearman self / margin:",
        "",
        "| estimator | design | M | self vs ref | self, corrected | margin vs ref | "
        "margin, corrected |",
        "|---|---|---|---|---|---|---|",
    ]
    for est, design, m, r in entries:
        lines.append(
            f"| {est} | {design} | {m} | {_f(r['spearman_self'])} | "
            f"{_f(r['spearman_self_vs_true'])} | {_f(r['spearman_margin'])} | "
            f"{_f(r['spearman_margin_vs_true'])} |"
        )
    for est, a in doc["auto"].items():
        moved = ", ".join(f"{r['models']}: {_f(r.get('flag_change'))}" for r in a["rounds"][1:])
        lines.append("")
        lines.append(
            f"`--models auto` ({est}): stopped at {a['stopped_at']} ({a['stopped_by']}); "
            f"flagged set moved per round: {moved}."
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    keys = [("spearman_self", "Spearman self-influence vs ref"),
            ("auc_margin", "margin ROC AUC (planted)"),
            ("spearman_margin", "Spearman margin vs ref")]  # fmt: skip
    for ax, (key, title) in zip(axes, keys, strict=True):
        for est, design, style in (("plain", "bernoulli", "o--"), ("adjusted", "bernoulli", "s-"),
                                   ("plain", "complementary", "o:"),
                                   ("adjusted", "complementary", "s:")):  # fmt: skip
            rows = [r for r in doc["grid"] if r["estimator"] == est and r["design"] == design]
            if rows:
                label = est if design == "bernoulli" else f"{est}, complementary"
                ax.plot([r["models"] for r in rows], [r[key] for r in rows], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("models M")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
