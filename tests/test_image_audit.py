"""End to end on real CIFAR-10 images with planted near-duplicates: `memaudit plant` then
`memaudit run` on the .npz, and the paper's image result: the lowest-margin targets are planted
near-duplicates whose top influencer is their planted copy. Also: the run resumes, ImageFolder
data runs, the reports show the images (and a redacted one does not).

Measured (180 images = 140 unique + 20 planted pairs, M = 48, resnet-tiny at 16 x 16, 40
epochs, one thread; 124-210 s for the module's setup on this shared 2-core machine, 2.4-4.0 s
of training per model; the same numbers in three runs): the 10 lowest-margin targets are all
planted and all have their planted copy as top influencer; 16 of the 20 planted pairs appear
among the 40 lowest margins with their copy as top influencer. On other subsets (220 images,
seeds 0 and 1) the 12 lowest held 9-10 planted targets at M = 48. Chance levels: 0.22
(planted share) and ~0 (a random top influencer is the copy with probability 1/180). The test
asks for 0.7, 0.6 and 0.5: far above chance, with room for the spread that another torch
build or thread count can cause.
"""

import json

import numpy as np
import pytest
import torch

from memaudit.api import Audit
from memaudit.data.images import ImageData, load_images
from tests.data.test_images import FIXTURE, _folder

N_UNIQUE = 140
PAIRS = 20
MODELS = 48
OPTIONS = [
    "--model", "resnet-tiny", "--resize", "16", "--crop-padding", "0", "--epochs", "40",
    "--batch-size", "32", "--lr", "0.05",
]  # fmt: skip


@pytest.fixture(scope="module")
def one_thread():
    # Shared CI runners and this 2-core machine run other torch processes: two threads then
    # spin against each other (measured 50x slower per step); one thread is deterministic too.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, one_thread):
    from memaudit.cli import main  # noqa: F401  (the CLI, in-process, as the user runs it)

    tmp = tmp_path_factory.mktemp("images")
    full = load_images(FIXTURE)
    sub = ImageData(
        full.images[:N_UNIQUE], full.labels[:N_UNIQUE], full.class_names,
        full.ids[:N_UNIQUE], [None] * N_UNIQUE,
    )  # fmt: skip
    sub.save(tmp / "source.npz")
    out = tmp / "run"
    _run_cli(["plant", tmp / "source.npz", "--groups", str(PAIRS), "--copies", "2",
              "--seed", "0", "--out", tmp / "planted.npz"])  # fmt: skip
    _run_cli(["run", tmp / "planted.npz", *OPTIONS, "--models", str(MODELS), "--out", out])
    return tmp, out


def _run_cli(args):
    import sys

    from memaudit.cli import main

    argv = sys.argv
    sys.argv = ["memaudit", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"memaudit {' '.join(map(str, args))} exited {exc.code}"
    finally:
        sys.argv = argv


@pytest.mark.slow
def test_lowest_margins_are_planted_pairs(planted_run):
    _, out = planted_run
    report = json.loads((out / "report.json").read_text())
    assert report["modality"] == "image"
    lowest = report["lowest_margin"]
    assert len(lowest) >= 10
    top10 = lowest[:10]
    planted = np.mean([e["group"] is not None for e in top10])
    pairs = np.mean([bool(e["top_influencer"] and e["top_influencer"]["same_group"])
                     for e in top10])  # fmt: skip
    assert planted >= 0.7, top10
    assert pairs >= 0.6, top10
    # Recall of the planted pairs among the 2 * PAIRS lowest margins (from the run directory).
    from memaudit.config import AnalysisConfig
    from memaudit.estimate.analysis import analyze_run
    from memaudit.findings.clusters import centred_margins

    analysis = analyze_run(Audit.open(out).run_dir, AnalysisConfig())
    adj = centred_margins(
        np.nan_to_num(analysis.losses), Audit.open(out).inclusion(), analysis.valid
    )
    groups = np.array([r.group or "" for r in analysis.records])
    margin = np.where(np.isfinite(adj["centred_margin"]), adj["centred_margin"], np.inf)
    lowest_k = np.argsort(margin, kind="stable")[: 2 * PAIRS]
    found = {groups[t] for t in lowest_k if groups[t] and groups[adj["other"][t]] == groups[t]}
    recall = len(found) / PAIRS
    assert recall >= 0.5, recall
    # Record what was measured next to the run, for the note.
    (out / "measured.json").write_text(
        json.dumps(
            {"precision_planted@10": planted, "precision_pair@10": pairs, "pair_recall@40": recall}
        )  # fmt: skip
    )


def test_report_contents(planted_run, cli):
    _, out = planted_run
    report = json.loads((out / "report.json").read_text())
    rec = report["records"][0]
    # Feldman-Zhang memorization beside the loss-based influence; every model fits its half.
    assert rec["accuracy_in"] == pytest.approx(1.0, abs=0.05)
    fz = [r["fz_memorization"] for r in report["records"]]
    assert np.nanmean(fz) > 0.3
    assert all(r["bleu_in"] is None and r["bleu_gain"] is None for r in report["records"])
    assert any("does not apply to image" in n for n in report["notes"])
    assert not any("Extractability was not computed" in n for n in report["notes"])
    for c in report["clusters"]:
        assert c["kind"] in ("visual", "influence", "mixed")
        assert all(ln["lexical_similarity"] is None for ln in c["links"])
    # The clusters against the planted pairs. Measured: 14 of 20 pairs recovered exactly, pair
    # precision 0.78 (18 linked pairs); without the image mutual_fraction rule (0.6) it was
    # 0.53 (30 pairs), as look-alikes of one class were linked. A chance cluster is a planted
    # pair with probability ~1/180.
    truth = report["ground_truth"]
    assert truth["groups_exact"] >= 10 and truth["pair_precision"] >= 0.65, truth
    visual = [c for c in report["clusters"] if c["kind"] == "visual"]
    assert visual and all(ln["pixel_similarity"] >= 0.7 for c in visual for ln in c["links"])
    html = (out / "report.html").read_text()
    assert "id='lowest-margin'" in html
    thumbs = html.count("src='data:image/png;base64,")
    assert thumbs >= 2 * 10  # each target beside its top influencer
    assert "http://" not in html and "https://" not in html and "<script" not in html
    # The pixels never go into report.json, and a redacted report shows none.
    assert "base64" not in (out / "report.json").read_text()
    res = cli("report", out, "--redact", "--format", "html")
    assert res.code == 0, res.err
    redacted = (out / "report.redacted.html").read_text()
    assert "src='data:image/png;base64," not in redacted
    assert "Images are not shown in a redacted report" in redacted
    import jsonschema

    from memaudit.report.build import load_schema

    jsonschema.validate(report, load_schema())


def test_rerun_resumes_without_training(planted_run, cli):
    tmp, out = planted_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    res = cli("run", tmp / "planted.npz", *OPTIONS, "--models", str(MODELS), "--out", out)
    assert res.code == 0, res.err
    assert f"resuming: {MODELS} models already trained, 0 to go" in res.err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "models").iterdir()} == before
    res = cli("run", tmp / "planted.npz", *OPTIONS, "--no-flip", "--models", "2", "--out", out)
    assert res.code == 2 and "different configuration (image.flip: True -> False)" in res.err
    res = cli("run", tmp / "source.npz", *OPTIONS, "--models", str(MODELS), "--out", out)
    assert res.code == 2 and "different dataset" in res.err


def test_image_folder_runs(tmp_path, cli, one_thread):
    root = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    res = cli("run", root, "--model", "resnet-tiny", "--epochs", "2", "--models", "4",
              "--out", out)  # fmt: skip
    assert res.code == 0, res.err
    # 4 models cannot make any influence significant: the report says so, lists nothing.
    assert "no margin is ranked" in res.out
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["image"]["crop_padding"] == 4 and cfg["train"]["lr"] == 0.05
    correct = np.load(out / "models" / "00000.correct.npy")
    assert correct.dtype == bool and correct.shape == (6,)
