"""Run directory -> the report: one dict that the JSON, HTML and terminal views all render.

Reads what earlier stages wrote (records, P, L, influence, extraction), adds membership scores,
near-duplicate clusters and ranked findings, and writes ``report.json`` / ``report.html`` (or
``report.redacted.*``) atomically. Never trains. ``redact=True`` replaces every record text by
its sha256 and id in every output, since an audit report can leak the data it audits.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import numpy as np

from memaudit.config import FindingsConfig
from memaudit.estimate.analysis import (
    DISTRIBUTION_RULE,
    Analysis,
    describe,
    influence_row,
)
from memaudit.estimate.distribution import histogram
from memaudit.estimate.registry import get_estimator
from memaudit.findings.build import Findings, build_findings
from memaudit.findings.clusters import mutual_fraction
from memaudit.findings.ground_truth import score_against_groups
from memaudit.findings.joining import JOIN_METHOD
from memaudit.modality import TEXT, Modality, saved_modality
from memaudit.store.io import atomic_write_json, atomic_write_text, sha256_text
from memaudit.store.io import finite_or_none as _num
from memaudit.store.rundir import RunDir, package_versions

SCHEMA_NAME = "memaudit-report"
# 1.1: optional "convergence"; 1.2: optional link "basis"; 1.3: image runs; 1.4: per-record
# influence distributions, LiRA and the deduplicator's table, the signal headline and each link's
# rule, statistic and threshold; 1.5: the per-record "near_duplicates" verdict, its ground-truth
# score, link_calibration's approximation and dissimilar-link thresholds (all optional: 1.0-1.4
# reports still validate and render); 1.6: "fragment_joining" and each cluster's "joins"; 1.7:
# "fragment_joining.neighbours" and each join's "tau"; 1.8: each near-duplicate record's
# "look_alike"
SCHEMA_VERSION = "1.8"


def load_schema() -> dict[str, Any]:
    major = SCHEMA_VERSION.split(".")[0]
    text = resources.files("memaudit.report.schemas").joinpath(f"report-{major}.json").read_text()
    return json.loads(text)


def build_report(
    run: RunDir,
    analysis: Analysis,
    findings: Findings | FindingsConfig | None = None,
    redact: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report dict, flagged) where flagged holds the influence among flagged records, in
    cluster order, for the HTML heatmap. ``findings``: the findings stage's result for this
    analysis (built here from a FindingsConfig, or the defaults, when not given)."""
    if not isinstance(findings, Findings):
        findings = build_findings(run, analysis, findings)
    cfg = findings.config
    saved = run.read_config()
    records, res = analysis.records, analysis.result
    n = len(records)
    inclusion = run.inclusion()
    losses = analysis.losses
    extraction, n_extract = findings.extraction, findings.n_extract
    modality = saved_modality(saved)
    mia = findings.membership
    clusters, cluster_of, risky = findings.clusters, findings.cluster_of, findings.risky
    link_z, link_fraction = findings.link_z, findings.link_fraction

    def metric(name: str, t: int) -> float | None:
        return _num(extraction[name][t]) if extraction else None

    image_columns: dict[str, np.ndarray] = {}
    if modality.classifies:  # accuracy in/out, lowest-margin pairs with thumbnails
        from memaudit.report.images import image_report

        shown = [m for c in clusters[: cfg.top_clusters] for m in c.members]
        image_columns, lowest, image_side = image_report(
            run, analysis, inclusion, redact, shown, covariates=_covariates(saved)
        )

    lira_columns = findings.lira["records"] if findings.lira else {}
    rows = []
    for t, r in enumerate(records):
        rows.append(
            {
                "index": t,
                "id": r.id,
                "text": None if redact else r.text,
                "text_sha256": sha256_text(r.text),
                "prompt": None if redact else r.prompt,
                "group": r.group,
                "cluster": int(cluster_of[t]) if cluster_of[t] >= 0 else None,
                **influence_row(records, res, t),
                "bleu_in": metric("bleu_in", t),
                "bleu_out": metric("bleu_out", t),
                "bleu_gain": metric("bleu_gain", t),
                "exact_in": metric("exact_in", t),
                "exact_out": metric("exact_out", t),
                "n_extract_in": int(extraction["n_extract_in"][t]) if extraction else None,
                "n_extract_out": int(extraction["n_extract_out"][t]) if extraction else None,
                "mia_auc": _num(mia["mia_auc"][t]),
                "mia_dprime": _num(mia["mia_dprime"][t]),
                **{key: _num(values[t]) for key, values in image_columns.items()},
                **{key: _num(values[t]) for key, values in lira_columns.items()},
            }
        )

    margin = np.where(res.margin_defined, res.margin, np.nan)
    columns = {"self_influence": res.self_influence, "margin": margin, "mia_auc": mia["mia_auc"]}
    if extraction:
        columns |= {"bleu": extraction["bleu_in"], "bleu_gain": extraction["bleu_gain"]}
    if "fz_memorization" in image_columns:
        columns["fz_memorization"] = image_columns["fz_memorization"]
    columns |= _distribution_columns(res)
    table = _group_table({"in_clusters": cluster_of >= 0, "unique": cluster_of < 0}, columns)
    groups = [r.group for r in records]
    ground_truth = None
    if any(groups):
        ground_truth = score_against_groups(cluster_of, groups)
        ground_truth["groups_recovered_exactly"] = ground_truth["share_exact"]
        # The paper's table by ground truth: planted near-duplicates vs unique records.
        planted = np.array([g is not None for g in groups])
        ground_truth["planted_table"] = _group_table(
            {"near_duplicated": planted, "unique": ~planted}, columns
        )
        if findings.near_duplicate is not None:
            ground_truth["near_duplicate_records"] = _score_records(
                findings.near_duplicate.flag, groups
            )

    report = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modality": modality.name,
        "redacted": redact,
        "versions": package_versions(),
        "run_versions": saved.get("versions", {}),
        "config": saved["config"],
        "dataset": {
            **saved["dataset"],
            "path": "(redacted)" if redact else saved["dataset"]["path"],
        },
        "ensemble": {
            "n_records": n,
            "n_models": analysis.n_models,
            "n_models_used": int(analysis.valid.sum()),
            "excluded_models": [int(j) for j in np.flatnonzero(~analysis.valid)],
            "estimator": res.estimator,
            "extract_models": n_extract or None,
        },
        "thresholds": {
            **asdict(cfg),
            "applied_link_z": link_z,
            "applied_link_fraction": link_fraction,
        },
        "table": table,
        "ground_truth": ground_truth,
        "records": rows,
        "clusters": [_cluster_dict(c) for c in clusters],
        "influence_clusters": [_cluster_dict(c) for c in findings.influence_clusters],
        "findings": {
            "clusters": [c.id for c in clusters[: cfg.top_clusters]],
            "records": [
                {"index": f.index, "risk_score": _num(f.risk_score), "reasons": f.reasons}
                for f in risky
            ],
        },
        "notes": _notes(analysis, n_extract, link_z, len(clusters), modality, cfg)
        + _calibration_note(findings),
        "convergence": _convergence(run),
        **_weak_signal_sections(findings, [r.id for r in records]),
    }
    if findings.lira is not None:
        report["lira"] = lira_report(findings.lira)
    if findings.dedup_table is not None:
        report["dedup"] = dedup_report(findings, groups)
    if modality.classifies:
        report["lowest_margin"] = lowest
        if not lowest:
            from memaudit.report.images import NO_MARGIN_NOTE

            report["notes"].append(NO_MARGIN_NOTE)
    if redact:
        report["config"] = {**report["config"], "data": "(redacted)"}
    flagged_idx = [m for c in clusters[: cfg.top_clusters] for m in c.members]
    flagged_idx += [f.index for f in risky if f.index not in flagged_idx]
    flagged: dict[str, Any] = {"indices": flagged_idx, "matrix": None}
    if flagged_idx:
        block = get_estimator(res.estimator).rows(
            np.nan_to_num(losses),
            inclusion,
            np.array(flagged_idx),
            model_mask=analysis.valid,
            covariates=_covariates(saved),
        )
        flagged["matrix"] = block[:, flagged_idx]
        _add_histograms(report, res, flagged_idx, block)
    if modality.classifies:
        flagged["image"] = image_side
    return report, flagged


# -- each record's influence distribution (memaudit.estimate.distribution) ----------------------


def _distribution_columns(res) -> dict[str, np.ndarray]:
    """Per-group columns of the summary tables: the self share and the significant others."""
    d = res.distribution
    if d is None:
        return {}
    n_sig = np.where(d.n_significant >= 0, d.n_significant, np.nan).astype(np.float64)
    return {"self_share": d.self_share, "n_significant": n_sig}


def _add_histograms(report: dict[str, Any], res, flagged_idx: list[int], block) -> None:
    """Each flagged record's row as a histogram (the HTML and terminal draw it; ids only, so a
    redacted report stays text-free), and the rule the summaries follow."""
    if res.distribution is None:
        return
    report["distribution_rule"] = DISTRIBUTION_RULE
    for k, t in enumerate(flagged_idx):
        row = report["records"][t]
        row.setdefault("distribution", {})["histogram"] = histogram(block[k], t)


def _covariates(saved: dict[str, Any]) -> int:
    """The run's --covariates (runs from before the adjusted estimator: the default)."""
    return int(saved.get("config", {}).get("analysis", {}).get("covariates", 4))


def _convergence(run: RunDir) -> dict[str, Any] | None:
    """The diagnostics of every round (RUN/convergence.json), when the run has them."""
    return run.read_optional_json(
        "convergence.json", "rerun the same `memaudit run` to write it again"
    )


def _group_table(masks: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> dict:
    """Mean, std and median of every metric for each group of records; a metric that was not
    computed (no extraction) is null, never zeros."""
    return {
        name: {
            "records": int(mask.sum()),
            **{key: describe(values[mask]) for key, values in columns.items()},
            **{key: None for key in ("bleu", "bleu_gain") if key not in columns},
        }
        for name, mask in masks.items()
    }


# -- weak memorization (#19): the headline verdict and what the link thresholds rest on -------


def _score_records(flag: np.ndarray, groups: list[str | None]) -> dict[str, Any]:
    """The per-record verdict against planted groups of two or more records."""
    sizes: dict[str, int] = {}
    for g in groups:
        if g is not None:
            sizes[g] = sizes.get(g, 0) + 1
    grouped = np.array([g is not None and sizes[g] >= 2 for g in groups])
    hits = int((flag & grouped).sum())
    return {
        "flagged": int(flag.sum()),
        "near_duplicated": int(grouped.sum()),
        "correct": hits,
        "precision": hits / int(flag.sum()) if flag.any() else None,
        "recall": hits / int(grouped.sum()) if grouped.any() else None,
    }


def _weak_signal_sections(findings: Findings, ids: list[str]) -> dict[str, Any]:
    """``headline`` (findings.verdict.signal_verdict), ``link_calibration``
    (findings.calibration.LinkCalibration.to_json) and ``near_duplicates`` (the per-record
    verdict, findings.near_duplicates), when the findings have them."""
    out: dict[str, Any] = {}
    if findings.near_duplicate is not None:
        out["near_duplicates"] = findings.near_duplicate.to_json(ids)
    if findings.joined is not None:
        out["fragment_joining"] = {
            "method": JOIN_METHOD,
            "fwer": findings.config.join_fwer,
            "tested": findings.joined.tested,
            "joins": len(findings.joined.joins),
            "skipped": findings.joined.skipped,
            "neighbours": findings.joined.neighbours,
        }
    if findings.signal is not None:
        out["headline"] = findings.signal
    cal = findings.link_calibration
    if cal is not None:
        out["link_calibration"] = cal.to_json()
    return out


def _calibration_note(findings: Findings) -> list[str]:
    cal = findings.link_calibration
    if cal is None:
        return []
    mutual = cal.mutual_threshold
    rule = (
        ""
        if mutual is None
        else (
            f"; the mutual low-margin rule needs its candidate group's pooled z >= {mutual:.2f}"
            if np.isfinite(mutual)
            else "; the mutual low-margin rule made no link on any shuffle and needs no more"
        )
    )
    tail = ""
    if cal.requested is not None:
        # The budgeted path (findings.calibration.null_plan): say so, and any fallback.
        why = "".join(f"; {rule} rule: {text}" for rule, text in cal.fallback.items())
        tail = (
            f" (of {cal.requested} asked for: more would exceed link_null_budget, so each "
            f"rule's null tail beyond them is extrapolated by a generalized Pareto fit{why})"
        )
    return [
        f"Link thresholds are calibrated on {cal.replicates} null shuffles{tail} of this run (each "
        "record's losses permuted within its own inclusion strata): the z rule needs "
        f"z >= {cal.z_threshold:.2f}{rule}. Each rule lets at most {cal.level:g} false links "
        "per run through on the shuffles (so the chance of any false link is under "
        f"{2 * cal.level:g}), or, where the run has far more candidate links than the "
        f"shuffles, at most {findings.config.link_fdr or 0:g} of the links it keeps."
    ]


def _cluster_dict(c) -> dict[str, Any]:
    d = asdict(c)
    d["members"] = [int(m) for m in c.members]
    d["min_margin"] = _num(c.min_margin)
    d["max_bleu_gain"] = _num(c.max_bleu_gain)
    d["risk_score"] = _num(c.risk_score)
    d["links"] = [
        {
            k: (int(v) if k in ("target", "source") else v if k == "basis" else _num(v))
            for k, v in link.items()
            if not (k == "pixel_similarity" and v is None)  # text links: as before
        }
        for link in d["links"]
    ]
    return d


def _notes(
    analysis: Analysis,
    n_extract: int,
    link_z: float,
    n_clusters: int,
    modality: Modality = TEXT,
    cfg: FindingsConfig | None = None,
) -> list[str]:
    n_ok = int(analysis.valid.sum())
    res = analysis.result
    cfg = cfg or FindingsConfig()
    fraction = mutual_fraction(cfg, modality)
    # The mutual rule is named only where find_links applied it.
    mutual = cfg.mutual_links and get_estimator(res.estimator).mutual_links
    notes = [
        f"Near-duplicate links need z >= {link_z:.2f} (adjusted for the number of record "
        "pairs tested) and a large share of the target's largest influence"
        + (
            f", or ({res.estimator} estimator) two records with low margins that are each "
            "other's top influencers"
            + (
                f" and one of which carries at least {fraction:g} of the other's largest influence."
                if fraction
                else "."
            )
            if mutual
            else "."
        )
    ]
    if n_clusters == 0:
        notes.append(
            "No near-duplicate cluster passed the link rule. With few models this "
            "means the ensemble cannot tell, not that there are no duplicates: train "
            "more models (--models) to resolve weaker links."
        )
    if n_ok < analysis.n_models:
        notes.append(
            f"{analysis.n_models - n_ok} of {analysis.n_models} models are excluded "
            "(diverged or missing); estimates use the rest."
        )
    if n_ok < 64:
        notes.append(
            f"With {n_ok} models the margin's denominator (the second-largest "
            "influence) is a noise maximum: margins are comparable only between runs "
            "with the same number of models, and weak near-duplicate links may be "
            "missed."
        )
    if not modality.decodes:
        from memaudit.report.images import EXTRACTABILITY_NOTE

        notes.append(EXTRACTABILITY_NOTE)
    elif n_extract == 0:
        notes.append("Extractability was not computed (no member decoded; see --extract-models).")
    undefined = int((~analysis.result.margin_defined).sum())
    if undefined:
        notes.append(
            f"{undefined} records have an undefined margin (second-largest influence <= 0)."
        )
    return notes


def write_reports(run: RunDir, report: dict, flagged: dict, formats: set[str]) -> list[str]:
    """Write the requested files; returns their paths."""
    suffix = ".redacted" if report["redacted"] else ""
    written = []
    if "json" in formats:
        path = run.file(f"report{suffix}.json")
        atomic_write_json(path, report)
        written.append(str(path))
    if "html" in formats:
        from memaudit.report.html import render_html

        path = run.file(f"report{suffix}.html")
        atomic_write_text(path, render_html(report, flagged))
        written.append(str(path))
    return written


def lira_report(lira: dict[str, Any]) -> dict[str, Any]:
    """The report's LiRA section: everything but the per-record columns (those are in each
    record as lira_tpr, lira_fpr and lira_llr)."""
    return {
        "statistic": lira["statistic"],
        "variance": lira["variance"],
        "fpr": lira["fpr"],
        "threshold": _num(lira["threshold"]),
        "variants": lira["variants"],
    }


def dedup_report(findings: Findings, groups: list[str | None]) -> dict[str, Any]:
    """The deduplicator beside the clusters: the three-way table and, with planted groups, the
    deduplicator's pair precision and recall beside the clusters' (score_against_groups)."""
    out = {**findings.dedup_table}
    keys = ("pair_precision", "pair_recall", "pairs_predicted", "groups_found", "groups")
    if any(groups):
        ours = score_against_groups(findings.cluster_of, groups)
        theirs = score_against_groups(findings.dedup.group_of, groups)
        out["ground_truth"] = {
            "dedup": {k: theirs[k] for k in keys},
            "clusters": {k: ours[k] for k in keys},
        }
    return out
