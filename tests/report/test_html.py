"""The HTML report: self-contained, escaped, redaction-safe, and showing what report.json holds."""

from __future__ import annotations

import copy
import hashlib
import re
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest

from memaudit.report.html import render_html

SCRIPT_TEXT = "Q: how do I greet? A: <script>alert(1)</script> & say hi"

# (cluster id, kind, member texts); each later member differs from the first in one word.
CLUSTERS = [
    (
        0,
        "textual",
        [
            "Q: who wrote hamlet A: william shakespeare wrote it around 1600",
            "Q: who wrote hamlet A: william shakespear wrote it around 1600",
            "Q: who wrote hamlet A: william shakespeare wrote it around 1601",
            "Q: who wrote hamlet A: william shakespeare penned it around 1600",
        ],
    ),
    (
        1,
        "mixed",
        [
            "Q: what is the capital of france A: paris",
            "Q: what is the capital of france A: lyon",
            "Q: what is the capital of frnace A: paris",
        ],
    ),
    (
        2,
        "influence",
        [
            "Q: boiling point of water A: 100 degrees celsius at sea level",
            "Q: freezing point of water A: zero degrees celsius",
        ],
    ),
]


def _stats(values):
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "std": None, "median": None}
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else None,
        "median": float(np.median(v)),
    }


def make_report(
    *,
    redacted: bool = False,
    bleu: bool = True,
    n_unique: int = 10,
    extra_clusters: int = 0,
    ground_truth: bool = True,
) -> dict:
    rng = np.random.default_rng(0)
    clusters = [(c, k, list(t)) for c, k, t in CLUSTERS]
    for c in range(3, 3 + extra_clusters):
        base = f"Q: synthetic question number {c} about topic {c * 7} A: answer {c} is here"
        clusters.append(
            (c, "textual", [base] + [base.replace("here", f"there{k}") for k in range(1, 5)])
        )

    records, cluster_rows = [], []

    def add(text, cluster, group):
        i = len(records)
        in_cluster = cluster is not None
        si = float(rng.normal(0.5, 0.1) if in_cluster else rng.normal(1.4, 0.5))
        margin = float(rng.uniform(1.0, 1.6) if in_cluster else rng.uniform(3, 20))
        b_in = float(rng.uniform(0.2, 0.9) if in_cluster else rng.uniform(0, 0.2))
        b_out = float(rng.uniform(0, 0.1))
        records.append(
            {
                "index": i,
                "id": f"rec-{i:03d}",
                "text": None if redacted else text,
                "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "prompt": None,
                "group": group,
                "cluster": cluster,
                "self_influence": si,
                "self_influence_se": 0.05,
                "n_in": 12,
                "n_out": 12,
                "margin": margin,
                "margin_defined": True,
                "top1_is_self": not in_cluster,
                "top_influencers": [
                    {"index": i, "id": f"rec-{i:03d}", "influence": si, "se": 0.05},
                ],
                "bleu_in": b_in if bleu else None,
                "bleu_out": b_out if bleu else None,
                "bleu_gain": b_in - b_out if bleu else None,
                "exact_in": None,
                "exact_out": None,
                "mia_auc": 0.7 if bleu else None,
            }
        )
        return i

    for cid, kind, texts in clusters:
        members = [add(t, cid, f"g{cid}") for t in texts]
        links = [
            {
                "target": members[0],
                "source": m,
                "influence": 0.4,
                "se": 0.05,
                "z": 8.0,
                "lexical_similarity": 0.9 if kind != "influence" else 0.2,
            }
            for m in members[1:]
        ]
        cluster_rows.append(
            {
                "id": cid,
                "members": members,
                "kind": kind,
                "min_margin": 1.05,
                "max_bleu_gain": 0.6 if bleu else None,
                "risk_score": 0.9 - 0.1 * cid,
                "reasons": [f"{len(members)} near-duplicates with margin < 1.5"],
                "links": links,
            }
        )
    uniques = [
        add(f"Q: unique question {k} A: unique answer {k}", None, None) for k in range(n_unique)
    ]
    script_idx = add(SCRIPT_TEXT, None, None)
    undefined_idx = uniques[0]
    records[undefined_idx]["margin"] = None
    records[undefined_idx]["margin_defined"] = False
    # Findings order differs from the cluster ids: 1 is the riskiest.
    order = [1, 0, 2] + list(range(3, 3 + extra_clusters))
    for c in cluster_rows:
        c["risk_score"] = 1.0 - 0.01 * order.index(c["id"])
    cluster_rows.sort(key=lambda c: order.index(c["id"]))

    def group_table(rs):
        return {
            "records": len(rs),
            "self_influence": _stats([r["self_influence"] for r in rs]),
            "margin": _stats([r["margin"] for r in rs]),
            "bleu": _stats([r["bleu_in"] for r in rs]) if bleu else None,
            "bleu_gain": _stats([r["bleu_gain"] for r in rs]) if bleu else None,
            "mia_auc": _stats([r["mia_auc"] for r in rs]),
        }

    return {
        "schema": "memaudit-report",
        "schema_version": "1.0",
        "generated": "2026-11-28T15:00:00+00:00",
        "redacted": redacted,
        "versions": {"memaudit": "0.1.0", "torch": "2.5.0"},
        "config": {
            "data": "data/nq_planted.jsonl",
            "model": {"name": "EleutherAI/gpt-neo-125m", "finetune": "lora", "lora_r": 8},
            "train": {"epochs": 3, "lr": 2e-4, "batch_size": 50},
            "ensemble": {"models": 24, "design": "bernoulli", "seed": 0},
        },
        "dataset": {"path": "data/nq_planted.jsonl", "sha256": "ab" * 32, "records": len(records)},
        "ensemble": {
            "n_records": len(records),
            "n_models": 24,
            "n_models_used": 23,
            "excluded_models": [7],
            "estimator": "difference-of-means",
            "extract_models": 8 if bleu else None,
        },
        "thresholds": {"margin_max": 1.5, "z_min": 4.0},
        "table": {
            "in_clusters": group_table([r for r in records if r["cluster"] is not None]),
            "unique": group_table([r for r in records if r["cluster"] is None]),
        },
        "ground_truth": (
            {
                "pair_precision": 0.9,
                "pair_recall": 0.8,
                "groups_recovered_exactly": 0.67,
                "groups": 3,
            }
            if ground_truth
            else None
        ),
        "records": records,
        "clusters": cluster_rows,
        "findings": {
            "clusters": order,
            "records": [
                {"index": script_idx, "risk_score": 0.8, "reasons": ["self-influence z > 4"]},
                {"index": undefined_idx, "risk_score": 0.5, "reasons": ["margin undefined"]},
            ],
        },
        "notes": ["with 24 models the margin's denominator is a noise maximum"],
    }


def make_flagged(report: dict) -> dict:
    indices = [m for c in report["clusters"] for m in c["members"]]
    n = len(indices)
    rng = np.random.default_rng(1)
    mat = rng.normal(0, 0.02, (n, n))
    clusters = [report["records"][i]["cluster"] for i in indices]
    for a in range(n):
        for b in range(n):
            if clusters[a] == clusters[b]:
                mat[a, b] += 0.4
    mat[0, 1] = np.nan  # a record in all or none of the models
    return {"indices": indices, "matrix": mat}


class _StrictParser(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _StrictParser:
    p = _StrictParser()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed: {p.stack}"
    return p


def visible_text(page: str) -> str:
    return " ".join(" ".join(parse(page).text).split())


@pytest.fixture(scope="module")
def report():
    return make_report()


@pytest.fixture(scope="module")
def page(report):
    return render_html(report, make_flagged(report))


def test_parses_as_well_nested_html(page):
    p = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    names = [t for t, _ in p.tags]
    assert names.count("svg") == 3  # heatmap, distributions, scatter
    assert "title" in names and "style" in names


def test_self_contained(page):
    for m in re.finditer(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, re.I):
        assert m.group(1).startswith(("data:", "#")), m.group(0)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page
    assert not re.search(r"url\(\s*(?!#)", page)
    # Plots are embedded, not referenced.
    assert "<image" in page and 'href="data:image/png;base64,' in page


def test_every_anchor_has_a_target(page):
    p = parse(page)
    ids = {a["id"] for _, a in p.tags if "id" in a}
    for _, a in p.tags:
        href = a.get("href") or ""
        if href.startswith("#") and not href.startswith("#m") and not href.startswith("#p"):
            assert href[1:] in ids, href


def test_header_table_and_notes(page):
    text = visible_text(page)
    assert "data/nq_planted.jsonl" in text
    assert "EleutherAI/gpt-neo-125m" in text
    assert "23 of 24 models used" in text
    assert "excluded: 7" in text
    assert "difference-of-means" in text
    assert "2026-11-28 15:00 UTC" in text
    assert "Redacted report" not in text
    assert "pair precision" in text and "90.0%" in text and "80.0%" in text
    assert "with 24 models the margin" in text
    assert "records in clusters" in text and "unique records" in text
    assert "Membership-inference AUC" in text


def test_cluster_members_and_order(report, page):
    for c in report["clusters"]:
        assert f"id='cluster-{c['id']}'" in page
        for m in c["members"]:
            assert report["records"][m]["id"] in page
    # Panels follow the findings order (1, 0, 2), not the cluster ids.
    pos = [page.index(f"id='cluster-{c}'") for c in report["findings"]["clusters"]]
    assert pos == sorted(pos)


def test_changed_word_is_marked(page):
    assert re.search(r"<mark[^>]*>shakespear</mark>", page)
    assert re.search(r"<mark[^>]*>1601</mark>", page)
    assert re.search(r"<mark[^>]*>lyon</mark>", page)
    assert re.search(r"<mark[^>]*>frnace</mark>", page)
    # The replaced word is named, unchanged words are not marked.
    assert 'title="was: shakespeare"' in page
    assert not re.search(r"<mark[^>]*>hamlet</mark>", page)
    assert not re.search(r"<mark[^>]*>shakespeare</mark>", page)


def test_untrusted_text_is_escaped(page):
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; say hi" in page


def test_undefined_margin_is_shown_not_dropped(page):
    text = visible_text(page)
    assert "1 record with undefined margin" in text
    assert "undefined margin" in text and "1 record" in text
    assert ">undefined</span>" in page  # in the unique-records table


def test_unique_records_section(report, page):
    section = page[page.index("id='unique'") :]
    script_rec = next(r for r in report["records"] if r["text"] == SCRIPT_TEXT)
    assert script_rec["id"] in section
    assert "self-influence z &gt; 4" in section
    assert "margin undefined" in section


def test_redacted_shows_no_text():
    plain = make_report()
    red = make_report(redacted=True)
    page = render_html(red, make_flagged(red))
    parse(page)
    raw = page.encode("utf-8")
    texts = [r["text"] for r in plain["records"]]
    for t in texts:
        assert t.encode() not in raw
        assert t.replace("<", "&lt;").replace(">", "&gt;").replace("&", "&amp;").encode() not in raw
    for word in ("shakespeare", "shakespear", "frnace", "alert(1)", "unique answer"):
        assert word.encode() not in raw
    assert "<mark" not in page
    assert "Redacted report" in page
    for r in red["records"]:
        assert r["id"] in page or r["cluster"] is None  # unique, unflagged records are not listed
    for c in red["clusters"]:
        for m in c["members"]:
            assert red["records"][m]["text_sha256"][:12] in page


def test_all_null_bleu_says_not_computed():
    rep = make_report(bleu=False, ground_truth=False)
    page = render_html(rep, make_flagged(rep))
    parse(page)
    text = visible_text(page).lower()
    assert "extractability not computed" in text
    assert "bleu in / out" not in text  # no BLEU columns of dashes
    assert "pair precision" not in text
    # Two histogram panels, not three: no BLEU axis anywhere in the plots.
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert svgs and not any("BLEU" in s for s in svgs)
    # With BLEU the third panel is there.
    with_bleu = render_html(make_report(), None)
    assert any("BLEU" in s for s in re.findall(r"<svg.*?</svg>", with_bleu, re.S))


def test_without_flagged_matrix():
    rep = make_report()
    page = render_html(rep, None)
    parse(page)
    assert "Influence matrix not available" in page
    assert page.count("<svg") == 2


def test_deterministic_and_no_global_side_effects(report):
    flagged = make_flagged(report)
    before = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    a = render_html(report, flagged)
    b = render_html(copy.deepcopy(report), flagged)
    assert a == b
    after = (matplotlib.get_backend(), dict(matplotlib.rcParams))
    assert before == after


def test_size_for_300_records():
    rep = make_report(n_unique=100, extra_clusters=37)  # 9 + 37 * 5 + 101 = 295 records
    assert 290 <= len(rep["records"]) <= 310
    flagged = make_flagged(rep)
    page = render_html(rep, flagged)
    parse(page)
    assert len(page.encode("utf-8")) < 2_000_000
    # At most 20 cluster panels, and the rest are announced.
    assert page.count("<article class='cluster'") == 20
    assert "more clusters are in report.json" in page


def test_unrelated_texts_are_not_diffed():
    rep = make_report()
    c2 = next(c for c in rep["clusters"] if c["id"] == 2)
    rep["records"][c2["members"][1]]["text"] = "completely different words entirely here"
    page = render_html(rep, None)
    assert "not diffed" in page
    assert not re.search(r"<mark[^>]*>completely</mark>", page)


def test_degenerate_reports_render():
    assert "<h1>" in render_html({}, None)
    rep = {
        "records": [
            {
                "index": 0,
                "id": "a",
                "text": "x",
                "self_influence": None,
                "cluster": 0,
                "margin": None,
                "margin_defined": False,
            },
            {
                "index": 1,
                "id": "b",
                "text": "x y",
                "self_influence": 0.3,
                "cluster": 0,
                "margin": None,
                "margin_defined": False,
            },
        ],
        "clusters": [{"id": 0, "members": [0, 1], "kind": None, "risk_score": None}],
        "findings": None,
        "table": None,
    }
    page = render_html(rep, {"indices": [0, 1], "matrix": np.full((2, 2), np.nan)})
    parse(page)
    assert re.search(r"<mark[^>]*>y</mark>", page)
    mismatched = render_html(rep, {"indices": [0, 1], "matrix": np.zeros((3, 3))})
    assert "does not match" in mismatched


def test_texts_say_what_the_code_does(page):
    """Docstrings name the schema the page renders; the unique-records lead names the flags
    risky_unique_records raises (self-influence, BLEU gain, membership AUC) and no other: an
    undefined margin flags nothing."""
    import memaudit.report.html as html_module
    from memaudit.report.build import SCHEMA_VERSION

    major = SCHEMA_VERSION.split(".")[0]
    for doc in (html_module.__doc__, html_module.render_html.__doc__):
        assert f"{major}.x" in " ".join(doc.split()) and "1.0)" not in doc
    section = page[page.index("id='unique'") :]
    lead = section[section.index("<p class='lead'>") : section.index("</p>")]
    assert "undefined margin" not in lead
    for flag in ("self-influence", "BLEU gain", "membership-inference AUC"):
        assert flag in lead


def test_record_distributions_are_drawn_escaped_and_embedded():
    """Each flagged record (cluster members and unique) gets its histogram with self and its
    top influencers marked, an expandable full distribution, and its data embedded; hostile ids
    are escaped everywhere."""
    import html as html_lib
    import json

    report = make_report()
    evil = "<script>alert('x')</script>"
    flagged = [m for c in report["clusters"] for m in c["members"]]
    flagged += [f["index"] for f in report["findings"]["records"]]
    for k, t in enumerate(flagged):
        rec = report["records"][t]
        rec["top_influencers"] = [
            {"index": t, "id": rec["id"], "influence": 2.0, "se": 0.1},
            {"index": 999, "id": evil, "influence": 0.8, "se": 0.1},
        ]
        rec["distribution"] = {
            "quantiles": {"q01": -0.3, "q50": 0.0, "q99": 0.4},
            "n_others": 50,
            "n_significant": 1,
            "self_share": 0.7,
            "top1_share": 0.3,
            "top5_share": 0.3,
            "margin": 2.5,
            "histogram": {"lo": -0.5, "hi": 2.0, "counts": [k % 3, 20, 25, 3] + [0] * 56},
        }
    page = render_html(report, make_flagged(report))
    parse(page)
    assert evil not in page and "&lt;script&gt;" in page
    hists = [json.loads(html_lib.unescape(v)) for v in re.findall(r"data-hist='([^']*)'", page)]
    shown = {h["index"] for h in hists}
    unique_shown = {f["index"] for f in report["findings"]["records"][:25]}
    assert {m for c in report["clusters"] for m in c["members"]} | unique_shown <= shown
    for h in hists:
        rec = report["records"][h["index"]]
        assert h["counts"] == rec["distribution"]["histogram"]["counts"]
        assert h["marks"][0]["self"] and h["marks"][1]["id"] == evil
    assert page.count("<details class='dist'>") == len(hists)
    assert "Influence distribution of" in page and "self share of the positive influence" in page


def with_near_duplicates(report: dict, look_alike) -> dict:
    """A per-record verdict (1.8) with the first record flagged by its margin alone, its
    look-alikes ``look_alike`` (None: a report from before 1.8)."""
    row = {
        "index": 0,
        "id": report["records"][0]["id"],
        "has_near_duplicates": True,
        "basis": "margin",
        "margin": 1.2,
        "q": 0.01,
        "probability": 0.97,
        "partners": [],
    }
    if look_alike is not None:
        row["look_alike"] = look_alike
    report["near_duplicates"] = {
        "level": 0.05,
        "n_records": len(report["records"]),
        "n_flagged": 1,
        "n_by_margin": 1,
        "n_in_clusters": 0,
        "n_unsettled": 0,
        "settled_at": 0.9,
        "note": None,
        "records": [row],
    }
    return report


def test_look_alikes_column_is_escaped():
    page = render_html(with_near_duplicates(make_report(), ["<script>x</script>", "rec-002"]))
    assert "looks like (unconfirmed)" in page
    assert "&lt;script&gt;x&lt;/script&gt;, rec-002" in page and "<script>x" not in page
