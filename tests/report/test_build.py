"""Reports: schema, re-rendering an older run directory, redaction, self-contained HTML."""

import json
import re
import shutil

import jsonschema
import pytest

from memaudit.report.build import load_schema
from tests.conftest import ROOT

V1_RUN = ROOT / "fixtures" / "runs" / "v1-foundation"


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    shutil.copytree(V1_RUN, out)
    return out


def _texts(run):
    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    # Whole texts and their parts long enough not to occur by chance in other output.
    parts = [r["text"] for r in rows]
    parts += [r["prompt"] for r in rows if r["prompt"] and len(r["prompt"]) >= 12]
    parts += [
        r["text"][len(r["prompt"]) :].strip()
        for r in rows
        if r["prompt"] and len(r["text"]) - len(r["prompt"]) >= 12
    ]
    return parts


def test_report_rerenders_an_older_run_directory(run_dir, cli):
    """A run directory written by the first release (format 1, no extraction) still renders."""
    res = cli("report", run_dir)
    assert res.code == 0, res.err
    report = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert report["schema"] == "memaudit-report" and report["schema_version"].startswith("1.")
    assert report["ensemble"]["n_records"] == 40 and report["ensemble"]["n_models"] == 6
    assert report["ensemble"]["extract_models"] is None
    assert all(r["bleu_in"] is None for r in report["records"])  # not computed, not zeros
    assert any("Extractability was not computed" in n for n in report["notes"])
    assert "memaudit report" in res.out and "self-influence" in res.out
    html = (run_dir / "report.html").read_text()
    assert "<html" in html.lower()
    # The terminal view fits 100 columns.
    assert max(len(line) for line in res.out.splitlines()) <= 100


def test_formats_are_selectable(run_dir, cli):
    res = cli("report", run_dir, "--format", "json")
    assert res.code == 0, res.err
    assert (run_dir / "report.json").exists() and not (run_dir / "report.html").exists()
    assert "memaudit report" not in res.out


def test_redacted_outputs_hold_no_record_text(run_dir, cli):
    res = cli("report", run_dir, "--redact")
    assert res.code == 0, res.err
    files = [run_dir / "report.redacted.json", run_dir / "report.redacted.html"]
    outputs = [f.read_bytes() for f in files] + [res.out.encode(), res.err.encode()]
    texts = _texts(run_dir)
    assert len(texts) > 40
    for raw in outputs:
        for text in texts:
            assert text.encode() not in raw
    report = json.loads(files[0].read_text())
    jsonschema.validate(report, load_schema())
    assert report["redacted"] is True
    assert all(r["text"] is None and len(r["text_sha256"]) == 64 for r in report["records"])
    # The unredacted report is untouched by a redacted rendering.
    assert not (run_dir / "report.json").exists()


def test_html_is_self_contained(run_dir, cli):
    cli("report", run_dir, "--format", "html")
    html = (run_dir / "report.html").read_text()
    assert not re.search(r"https?://", html)
    for attr in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html):
        assert attr.startswith(("data:", "#")), attr
    assert "<script src" not in html and "@import" not in html


def test_thresholds_are_options_and_saved(run_dir, cli):
    res = cli("report", run_dir, "--format", "json", "--link-z", "2.5", "--link-fraction", "0.2")
    assert res.code == 0, res.err
    report = json.loads((run_dir / "report.json").read_text())
    assert report["thresholds"]["link_z"] == 2.5 and report["thresholds"]["link_fraction"] == 0.2
    res = cli("report", run_dir, "--link-fraction", "3")
    assert res.code == 2 and "--link-fraction" in res.err


def test_report_of_a_missing_run_dir(tmp_path, cli):
    res = cli("report", tmp_path / "nope")
    assert res.code == 2 and "not a memaudit run directory" in res.err


# -- each record's influence distribution ------------------------------------------------------


def _embedded_histograms(page: str) -> list[dict]:
    """The data-hist attributes of the page's small histograms, decoded."""
    import html as html_lib

    return [json.loads(html_lib.unescape(v)) for v in re.findall(r"data-hist='([^']*)'", page)]


def test_flagged_histograms_match_influence_row(run_dir, cli):
    """Every flagged record's histogram in the page counts its full row as Audit.influence_row
    computes it; the summaries in report.json are Audit.distribution's."""
    import numpy as np

    from memaudit.api import Audit

    res = cli("report", run_dir)
    assert res.code == 0, res.err
    report = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    assert "Benjamini-Hochberg" in report["distribution_rule"]["significance"]
    assert all("distribution" in r for r in report["records"])
    page = (run_dir / "report.html").read_text()
    hists = _embedded_histograms(page)
    flagged = {f["index"] for f in report["findings"]["records"]}
    flagged |= {m for c in report["findings"]["clusters"] for m in report["clusters"][c]["members"]}
    assert flagged and {h["index"] for h in hists} == flagged
    audit = Audit.open(run_dir)
    for h in hists:
        t = h["index"]
        row = audit.influence_row(t)
        infl = row["influence"]
        assert row["se"].shape == infl.shape == (report["ensemble"]["n_records"],)
        others = np.delete(infl, t)
        others = others[np.isfinite(others)]
        assert h["lo"] == pytest.approx(min(others.min(), infl[t]))
        assert h["hi"] == pytest.approx(max(others.max(), infl[t]))
        counts, _ = np.histogram(others, bins=len(h["counts"]), range=(h["lo"], h["hi"]))
        assert h["counts"] == counts.tolist()
        # Self is marked at its own value, then the top influencers by id.
        assert h["marks"][0] == {"id": row["id"], "influence": pytest.approx(infl[t]), "self": True}
        rec = report["records"][t]
        want = {k: v for k, v in rec["distribution"].items() if k != "histogram"}
        got = audit.distribution(t)
        assert got["id"] == rec["id"] and got["quantiles"] == pytest.approx(want["quantiles"])
        assert got["n_significant"] == want["n_significant"]
        assert got["self_share"] == pytest.approx(want["self_share"])
    # Without influence.npz the summaries come from the row itself: the same numbers.
    t = hists[0]["index"]
    saved = audit.distribution(t)
    (run_dir / "influence.npz").unlink()
    again = audit.distribution(t)
    for key in ("quantiles", "n_significant", "self_share", "top1_share", "top5_share", "margin"):
        assert again[key] == pytest.approx(saved[key], rel=1e-6, abs=1e-9), key


def test_redacted_distributions_carry_ids_only(run_dir, cli):
    res = cli("report", run_dir, "--redact")
    assert res.code == 0, res.err
    page = (run_dir / "report.redacted.html").read_text()
    hists = _embedded_histograms(page)
    assert hists and "Influence distribution of" in page
    texts = _texts(run_dir)
    for text in texts:
        assert text not in page
    ids = {json.loads(line)["id"] for line in (run_dir / "records.jsonl").read_text().splitlines()}
    assert {m["id"] for h in hists for m in h["marks"]} <= ids


def test_lira_and_dedup_sections_validate_and_render(run_dir, cli):
    """Report 1.4's optional sections: LiRA over (record, model) pairs and the deduplicator's
    three-way table, in JSON (schema), HTML (log-scale ROC) and the terminal."""
    res = cli("report", run_dir)
    assert res.code == 0, res.err
    report = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(report, load_schema())
    lira = report["lira"]
    overall = lira["variants"]["online"]["overall"]

    # v1-foundation: 40 records x 6 models. Leave-one-model-out, a pair is scored when the
    # other 5 models leave t at least one model on each side: a record in k models has k
    # scorable in-pairs when k >= 2 (and k <= 5), and 6 - k out-pairs when k >= 1 (and k <= 4).
    def scorable(k):
        return (k if 2 <= k <= 5 else 0) + (6 - k if 1 <= k <= 4 else 0)

    assert overall["pairs"] == sum(scorable(r["n_in"]) for r in report["records"])
    assert 0.5 < overall["auc"] <= 1.0 and lira["variance"] == "global"
    assert all(0.0 <= r["lira_tpr"] <= 1.0 for r in report["records"] if r["lira_tpr"] is not None)
    dedup = report["dedup"]
    assert dedup["method"] == "minhash"
    assert dedup["dedup_pairs"] == dedup["confirmed"]["pairs"] + dedup["dedup_only"]["pairs"]
    assert dedup["ground_truth"]["dedup"]["pair_precision"] == 1.0
    html = (run_dir / "report.html").read_text()
    assert "id='lira'" in html and "id='dedup'" in html
    assert "false-positive rate (log scale)" in html
    assert "TPR at 0.1% FPR" in res.out and "Beside a deduplicator" in res.out
    # A report from before these sections still renders, without them.
    from memaudit.report.html import render_html

    old = {k: v for k, v in report.items() if k not in ("lira", "dedup")}
    page = render_html(old)
    assert "id='lira'" not in page and "href='#lira'" not in page
