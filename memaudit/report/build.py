"""Run directory -> the report: one dict that the JSON, HTML and terminal views all render.

Reads what earlier stages wrote (records, P, L, influence, extraction), adds membership scores,
near-duplicate clusters and ranked findings, and writes ``report.json`` / ``report.html`` (or
``report.redacted.*``) atomically. Never trains. ``redact=True`` replaces every record text by
its sha256 and id in every output, since an audit report can leak the data it audits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import resources
from typing import Any

import numpy as np

from memaudit.config import FindingsConfig
from memaudit.estimate.adjusted import ESTIMATOR_NAME as ADJUSTED_NAME
from memaudit.estimate.analysis import Analysis, describe, influence_row
from memaudit.estimate.registry import influence_rows
from memaudit.findings.build import Findings, build_findings
from memaudit.findings.clusters import mutual_fraction
from memaudit.findings.ground_truth import score_against_groups
from memaudit.store.io import atomic_write_json, atomic_write_text
from memaudit.store.rundir import RunDir, package_versions

SCHEMA_NAME = "memaudit-report"
# 1.1: optional "convergence"; 1.2: optional link "basis"; 1.3: image runs (see report-1.json)
SCHEMA_VERSION = "1.3"


def load_schema() -> dict[str, Any]:
    major = SCHEMA_VERSION.split(".")[0]
    text = resources.files("memaudit.report.schemas").joinpath(f"report-{major}.json").read_text()
    return json.loads(text)


def _num(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    is_image = saved["config"].get("image") is not None
    mia = findings.membership
    clusters, cluster_of, risky = findings.clusters, findings.cluster_of, findings.risky
    link_z, link_fraction = findings.link_z, findings.link_fraction

    def metric(name: str, t: int) -> float | None:
        return _num(extraction[name][t]) if extraction else None

    image_columns: dict[str, np.ndarray] = {}
    if is_image:
        from memaudit.report.images import image_report

        shown = [m for c in clusters[: cfg.top_clusters] for m in c.members]
        image_columns, lowest, image_side = image_report(run, analysis, inclusion, redact, shown)

    rows = []
    for t, r in enumerate(records):
        rows.append(
            {
                "index": t,
                "id": r.id,
                "text": None if redact else r.text,
                "text_sha256": _sha(r.text),
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
            }
        )

    margin = np.where(res.margin_defined, res.margin, np.nan)
    columns = {"self_influence": res.self_influence, "margin": margin, "mia_auc": mia["mia_auc"]}
    if extraction:
        columns |= {"bleu": extraction["bleu_in"], "bleu_gain": extraction["bleu_gain"]}
    if "fz_memorization" in image_columns:
        columns["fz_memorization"] = image_columns["fz_memorization"]
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

    report = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modality": "image" if is_image else "text",
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
        "findings": {
            "clusters": [c.id for c in clusters[: cfg.top_clusters]],
            "records": [
                {"index": f.index, "risk_score": _num(f.risk_score), "reasons": f.reasons}
                for f in risky
            ],
        },
        "notes": _notes(analysis, n_extract, link_z, len(clusters), is_image, cfg),
        "convergence": _convergence(run),
    }
    if is_image:
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
        block = influence_rows(
            res.estimator,
            np.nan_to_num(losses),
            inclusion,
            np.array(flagged_idx),
            model_mask=analysis.valid,
            covariates=_covariates(saved),
        )
        flagged["matrix"] = block[:, flagged_idx]
    if is_image:
        flagged["image"] = image_side
    return report, flagged


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
    is_image: bool = False,
    cfg: FindingsConfig | None = None,
) -> list[str]:
    n_ok = int(analysis.valid.sum())
    fraction = mutual_fraction(cfg or FindingsConfig(), is_image)
    notes = [
        f"Near-duplicate links need z >= {link_z:.2f} (adjusted for the number of record "
        "pairs tested) and a large share of the target's largest influence"
        + (
            ", or (regression-adjusted estimator) two records with low margins that are each "
            "other's top influencers"
            + (
                f" and one of which carries at least {fraction:g} of the other's largest influence."
                if fraction
                else "."
            )
            if analysis.result.estimator == ADJUSTED_NAME
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
    if is_image:
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
