"""The image-only parts of the report: per-record accuracy in/out (the Feldman & Zhang
memorization score), the lowest-margin targets with their top influencer, and the thumbnails
and influence rows the HTML report draws for them.

The paper's image experiment sorts targets by the lowest Top-1 influence margin and shows each
beside its most influential other image; those pairs were near-duplicates. This module builds
that list from the run directory (``images.npz``, ``models/*.correct.npy``) without training.
Pixels never enter ``report.json``: thumbnails travel beside it, for the HTML only, and are
dropped when the report is redacted.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from memaudit.data.images import stored_images
from memaudit.estimate.analysis import Analysis
from memaudit.estimate.registry import get_estimator
from memaudit.findings.clusters import centred_margins
from memaudit.findings.similarity import pixel_similarity
from memaudit.store.io import finite_or_none as _num
from memaudit.store.rundir import RunDir

LOWEST_MARGIN_TARGETS = 12  # how many targets the report lists (the paper showed six)
THUMBNAIL_SIZE = 64  # pixels per side in the HTML (nearest-neighbour upscaling)

NO_MARGIN_NOTE = (
    "No target has a significant largest influence (z >= 3), so no margin is ranked: the "
    "ensemble is too small or the models do not memorise; train more models or epochs."
)
EXTRACTABILITY_NOTE = (
    "Extractability does not apply to image classifiers (nothing is generated from a prompt); "
    "the BLEU columns are left out."
)


def accuracy_in_out(correct: np.ndarray | None, inclusion: np.ndarray, valid: np.ndarray):
    """Per record: accuracy over the models that trained on it (in) and that did not (out),
    and the Feldman & Zhang (2020) memorization score in - out; NaN where a side has no model.
    ``correct`` is N x M (1/0, NaN for models without a result)."""
    n = len(inclusion)
    if correct is None:
        nan = np.full(n, np.nan)
        return nan, nan, nan
    ok = np.isfinite(correct) & valid[None, :]
    inc = inclusion.astype(bool)
    c = np.nan_to_num(correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_in = (c * (ok & inc)).sum(1) / (ok & inc).sum(1)
        acc_out = (c * (ok & ~inc)).sum(1) / (ok & ~inc).sum(1)
    return acc_in, acc_out, acc_in - acc_out


def png_data_uri(img: np.ndarray, size: int = THUMBNAIL_SIZE) -> str:
    """A data: URI of img (uint8 H x W x 3) as a PNG, upscaled with nearest neighbours."""
    from PIL import Image

    im = Image.fromarray(img)
    scale = max(1, size // max(img.shape[:2]))
    im = im.resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _q(values: np.ndarray) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    if not len(v):
        return {k: None for k in ("min", "median", "q90", "q99", "max")}
    qs = np.quantile(v, [0.0, 0.5, 0.9, 0.99, 1.0])
    return dict(zip(("min", "median", "q90", "q99", "max"), map(float, qs), strict=True))


def image_report(
    run: RunDir,
    analysis: Analysis,
    inclusion: np.ndarray,
    redact: bool,
    thumbnails_of: list[int] | tuple[int, ...] = (),
    covariates: int = 4,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """(per-record columns, the lowest-margin list for report.json, the HTML's side data: the
    influence rows of the lowest-margin targets, and thumbnails of them, their top influencers
    and ``thumbnails_of``, e.g. the shown clusters' members). The influence rows are the run's
    estimator's (``covariates``: the run's --covariates, for the adjusted one)."""
    data = stored_images(run)
    res, records = analysis.result, analysis.records
    n = len(records)
    correct = run.collect_array("correct", n, inclusion.shape[1])
    acc_in, acc_out, fz = accuracy_in_out(correct, inclusion, analysis.valid)
    columns = {"accuracy_in": acc_in, "accuracy_out": acc_out, "fz_memorization": fz}

    # Ranked by the centred margin (findings.centred_margins): at the ensemble sizes a CPU
    # affords, the margin of a unique image is as often near 1 as a duplicate's.
    adj = centred_margins(np.nan_to_num(analysis.losses), inclusion, analysis.valid)
    margin_adj, other = adj["centred_margin"], adj["other"]
    columns["centred_margin"] = margin_adj
    order = np.flatnonzero(np.isfinite(margin_adj))
    order = order[np.lexsort((order, margin_adj[order]))][:LOWEST_MARGIN_TARGETS]
    block = None
    if len(order):
        # The rows by the run's estimator, as the report labels them (and as res.margin is).
        block = get_estimator(res.estimator).rows(
            np.nan_to_num(analysis.losses),
            inclusion,
            order,
            model_mask=analysis.valid,
            covariates=covariates,
        )
    pairs = np.array([[t, other[t]] for t in order if other[t] >= 0], dtype=np.int64)
    sims = pixel_similarity(data.images, pairs) if data is not None else np.full(len(pairs), np.nan)
    sim_of = {int(t): _num(s) for (t, _), s in zip(pairs, sims, strict=True)}

    def who(i: int) -> dict[str, Any]:
        return {
            "index": i,
            "id": records[i].id,
            "label": records[i].text,
            "group": records[i].group,
        }

    lowest, rows, thumbs = [], [], {}
    for k, t in enumerate(order):
        t = int(t)
        row = block[k]
        o = int(other[t])
        top = None
        if o >= 0:
            top = {
                **who(o),
                "influence": _num(row[o]),  # I[t, o] by the run's estimator
                "centred_influence": _num(adj["other_influence"][t]),
                "centred_se": _num(adj["other_se"][t]),
                "pixel_similarity": sim_of.get(t),
                "same_group": records[t].group is not None and records[t].group == records[o].group,
            }
        lowest.append(
            {
                **who(t),
                "centred_margin": float(margin_adj[t]),
                "margin": _num(res.margin[t]) if res.margin_defined[t] else None,
                "self_influence": _num(adj["self_influence"][t]),
                "fz_memorization": _num(fz[t]),
                "top_influencer": top,
                "influence_quantiles": _q(np.delete(row, t)),
            }
        )
        rows.append(row)
        if data is not None and not redact:
            for i in (t, o) if o >= 0 else (t,):
                thumbs.setdefault(i, png_data_uri(data.images[i]))
    if data is not None and not redact:
        for i in thumbnails_of:
            thumbs.setdefault(int(i), png_data_uri(data.images[int(i)], THUMBNAIL_SIZE // 2))
    side = {"lowest_rows": rows, "thumbnails": thumbs}
    return columns, lowest, side
