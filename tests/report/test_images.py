"""The image part of the report, on a synthetic image run directory (no training): accuracy
in/out, the lowest-margin list, its influence rows by the run's estimator, thumbnails."""

from __future__ import annotations

import numpy as np
import pytest

from memaudit.config import AnalysisConfig, ImageConfig, ModelConfig, RunConfig
from memaudit.data.images import ImageData
from memaudit.estimate.analysis import analyze_run
from memaudit.estimate.registry import get_estimator
from memaudit.report.images import accuracy_in_out, image_report, png_data_uri
from memaudit.store.rundir import RunDir


def image_run(path, n=40, m=32, seed=0) -> RunDir:
    """An image run directory as `memaudit run` leaves it: records 0 and 1 (and 2 and 3) are
    planted copies that substitute for each other, every image is memorised a little."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    images[1], images[3] = images[0], images[2]
    labels = np.arange(n) % 3
    groups = ["a", "a", "b", "b"] + [None] * (n - 4)
    data = ImageData(images, labels, ["cat", "dog", "ship"], [f"img{i}" for i in range(n)], groups)
    cfg = RunConfig(data="synthetic.npz", model=ModelConfig("resnet-tiny"), image=ImageConfig())
    run = RunDir(path)
    run.check_or_create(cfg, data.records(), data.sha256())
    run.save_images(data)
    inc = rng.random((n, m)) < 0.5
    run.save_inclusion(inc)
    losses = rng.normal(2.0, 0.2, (n, m)) - rng.uniform(0.3, 1.0, n)[:, None] * inc
    for a, b in ((0, 1), (2, 3)):
        losses[a] -= 0.8 * inc[b]
        losses[b] -= 0.8 * inc[a]
    correct = (losses < 1.6).astype(np.float64)
    for j in range(m):
        run.save_model(j, losses[:, j], {"status": "ok"}, arrays={"correct": correct[:, j]})
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return image_run(tmp_path_factory.mktemp("images") / "run")


@pytest.mark.parametrize("estimator", ["adjusted", "plain"])
def test_lowest_margin_rows_are_the_runs_estimator(run, estimator):
    """The top influencer's "influence" is labelled "by the run's estimator": with the adjusted
    estimator it must be the adjusted row (it was the plain one), and so are the histograms."""
    analysis = analyze_run(run, AnalysisConfig(estimator=estimator))
    inclusion = run.inclusion()
    _, lowest, side = image_report(run, analysis, inclusion, False, covariates=4)
    assert lowest, "the planted pairs have significant, defined margins"
    targets = np.array([e["index"] for e in lowest])
    expected = get_estimator(estimator).rows(
        np.nan_to_num(analysis.losses), inclusion, targets, model_mask=analysis.valid
    )
    other = get_estimator("plain" if estimator == "adjusted" else "adjusted").rows(
        np.nan_to_num(analysis.losses), inclusion, targets, model_mask=analysis.valid
    )
    assert len(side["lowest_rows"]) == len(lowest)
    for k, e in enumerate(lowest):
        np.testing.assert_allclose(side["lowest_rows"][k], expected[k])
        o = e["top_influencer"]["index"]
        assert e["top_influencer"]["influence"] == pytest.approx(expected[k, o])
        assert e["top_influencer"]["influence"] != pytest.approx(other[k, o])
    # The planted copies are each other's strongest other influencer.
    planted = [e for e in lowest if e["group"] is not None]
    assert planted and all(e["top_influencer"]["same_group"] for e in planted)


def test_columns_thumbnails_and_redaction(run):
    analysis = analyze_run(run, AnalysisConfig())
    inclusion = run.inclusion()
    columns, lowest, side = image_report(run, analysis, inclusion, False, thumbnails_of=[5])
    assert set(columns) == {"accuracy_in", "accuracy_out", "fz_memorization", "centred_margin"}
    np.testing.assert_allclose(
        columns["fz_memorization"], columns["accuracy_in"] - columns["accuracy_out"]
    )
    thumbs = side["thumbnails"]
    assert 5 in thumbs and all(e["index"] in thumbs for e in lowest)
    assert all(uri.startswith("data:image/png;base64,") for uri in thumbs.values())
    _, _, redacted = image_report(run, analysis, inclusion, True, thumbnails_of=[5])
    assert redacted["thumbnails"] == {}


def test_accuracy_in_out_by_hand():
    inclusion = np.array([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    correct = np.array([[1, 0, 1, 1], [np.nan, 1, 0, 1]])
    valid = np.array([True, True, True, False])
    acc_in, acc_out, fz = accuracy_in_out(correct, inclusion, valid)
    np.testing.assert_allclose(acc_in, [1.0, 0.0])  # record 1: model 3 is excluded
    np.testing.assert_allclose(acc_out, [0.0, 1.0])  # record 1: model 0 has no result
    np.testing.assert_allclose(fz, [1.0, -1.0])
    assert all(np.isnan(a).all() for a in accuracy_in_out(None, inclusion, valid))


def test_png_data_uri_upscales_by_whole_pixels():
    import base64
    import io

    from PIL import Image

    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)
    uri = png_data_uri(img, size=32)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert back.shape == (32, 32, 3)
    assert (back[:4, :4] == (255, 0, 0)).all() and (back[4:, 4:] == 0).all()
