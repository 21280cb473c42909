"""Image planting (memaudit.data.plant_images) and `memaudit plant` on image data."""

import numpy as np

from memaudit.data.images import load_images
from memaudit.data.plant_images import plant_images
from memaudit.findings.similarity import pixel_similarity
from tests.data.test_images import FIXTURE, _folder


def test_plant_groups_and_edits():
    data = load_images(FIXTURE)
    out = plant_images(data, groups=10, copies=3, seed=1)
    assert len(out) == 300 + 10 * 2
    groups = [g for g in out.groups if g]
    assert len(groups) == 30 and len(set(groups)) == 10
    for g in set(groups):
        members = [i for i, x in enumerate(out.groups) if x == g]
        orig = members[0]
        assert out.ids[members[1]] == f"{out.ids[orig]}-dup1"
        assert len({out.labels[i] for i in members}) == 1
        for m in members[1:]:
            # An edited copy: never the same pixels, yet a near-duplicate.
            assert not np.array_equal(out.images[m], out.images[orig])
            assert pixel_similarity(out.images, np.array([[orig, m]]))[0] > 0.3
    sims = pixel_similarity(
        out.images,
        np.array(
            [[i, i + 1] for i, g in enumerate(out.groups[:-1]) if g and g == out.groups[i + 1]]
        ),
    )
    assert np.median(sims) > 0.85
    again = plant_images(data, groups=10, copies=3, seed=1)
    assert np.array_equal(again.images, out.images)  # seeded
    assert not np.array_equal(plant_images(data, 10, 3, seed=2).images, out.images)


def test_flip_is_free_for_pixel_similarity():
    data = load_images(FIXTURE)
    imgs = np.concatenate([data.images[:5], data.images[:5, :, ::-1]])
    sims = pixel_similarity(imgs, np.array([[i, i + 5] for i in range(5)]))
    np.testing.assert_allclose(sims, 1.0, atol=1e-9)
    rng = np.random.default_rng(0)
    pairs = rng.choice(300, size=(500, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    assert np.mean(pixel_similarity(data.images, pairs) > 0.7) < 0.05


def test_cli_plant_image_folder(tmp_path, cli):
    root = _folder(tmp_path / "imgs")
    res = cli("plant", root, "--groups", "2", "--copies", "2", "--out", tmp_path / "p.npz")
    assert res.code == 0, res.err
    out = load_images(tmp_path / "p.npz")
    assert len(out) == 8 and sum(g is not None for g in out.groups) == 4
    assert out.class_names == ["airplane", "cat"]
    res = cli("plant", root, "--groups", "2", "--out", tmp_path / "p.jsonl")
    assert res.code == 2 and "into an .npz" in res.err
    res = cli("plant", root, "--groups", "99", "--out", tmp_path / "q.npz")
    assert res.code == 2 and "--groups: must be between 1 and 6" in res.err
    assert not (tmp_path / "q.npz").exists()


def test_cli_plant_never_overwrites_its_image_input(tmp_path, cli):
    src = tmp_path / "in.npz"
    src.write_bytes(FIXTURE.read_bytes())
    before = src.read_bytes()
    res = cli("plant", src, "--groups", "2", "--copies", "2", "--out", src)
    assert res.code == 2 and "is the input itself" in res.err
    assert src.read_bytes() == before
