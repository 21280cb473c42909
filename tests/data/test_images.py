"""Image loading (memaudit.data.images) and its bad inputs through the CLI: one line, exit 2,
nothing written."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memaudit.data.images import load_images
from memaudit.errors import MemauditError
from tests.conftest import tree, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "fixtures" / "images" / "cifar10_demo.npz"


def _png(path: Path, size=(8, 8), value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    arr[0, 0] = (value + 77) % 256  # not a flat image
    Image.fromarray(arr).save(path)


def _folder(root: Path) -> Path:
    for k, cls in enumerate(("cat", "airplane")):
        for i in range(3):
            _png(root / cls / f"{i}.png", value=40 * k + i)
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_fixture_npz():
    data = load_images(FIXTURE)
    assert data.images.shape == (300, 32, 32, 3) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [30] * 10
    assert data.class_names[3] == "cat"
    assert len(set(data.ids)) == 300 and all(g is None for g in data.groups)
    recs = data.records()
    assert recs[0].text == data.class_names[data.labels[0]] and recs[5].index == 5
    assert FIXTURE.stat().st_size < 2_000_000


def test_image_folder(tmp_path):
    data = load_images(_folder(tmp_path / "imgs"))
    # Classes in sorted order, as torchvision's ImageFolder numbers them.
    assert data.class_names == ["airplane", "cat"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.ids[0] == "airplane/0.png"
    assert data.images.shape == (6, 8, 8, 3)
    assert data.images[3, 0, 0, 0] == 77  # cat/0.png: value 0, corner 77


def test_resize_and_sha(tmp_path):
    root = _folder(tmp_path / "imgs")
    _png(root / "cat" / "big.png", size=(12, 10))
    with pytest.raises(MemauditError, match="use --resize"):
        load_images(root)
    data = load_images(root, resize=16)
    assert data.images.shape == (7, 16, 16, 3)
    assert data.sha256() == load_images(root, resize=16).sha256()
    assert data.sha256() != load_images(root, resize=8).sha256()


def test_npz_optional_arrays(tmp_path):
    images = np.zeros((4, 5, 5), dtype=np.uint8)  # grayscale N x H x W
    np.savez(
        tmp_path / "g.npz",
        images=images,
        labels=np.array([0, 1, 1, 0]),
        ids=np.array(["a", "b", "c", "d"]),
        groups=np.array(["", "g0", "g0", ""]),
    )
    data = load_images(tmp_path / "g.npz")
    assert data.images.shape == (4, 5, 5, 3)
    assert data.class_names == ["0", "1"]
    assert data.groups == [None, "g0", "g0", None]


def _bad_inputs(tmp: Path) -> None:
    _folder(tmp / "unreadable")
    (tmp / "unreadable" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    _folder(tmp / "mixed")
    _png(tmp / "mixed" / "cat" / "wide.png", size=(16, 8))
    _folder(tmp / "emptyclass")
    (tmp / "emptyclass" / "dog").mkdir()
    (tmp / "emptyclass" / "dog" / "readme.txt").write_text("no images here")
    imgs = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp / "range.npz", images=imgs, labels=np.array([0, 1, 5]), class_names=["a", "b"])
    np.savez(tmp / "negative.npz", images=imgs, labels=np.array([0, -1, 1]))
    np.savez(tmp / "nolabels.npz", images=imgs)
    np.savez(tmp / "float.npz", images=imgs.astype(np.float32), labels=np.array([0, 1, 1]))
    (tmp / "garbage.npz").write_bytes(b"not a zip")
    (tmp / "cifar").mkdir()
    write_jsonl(tmp / "text.jsonl", [{"text": "a b c"}])


BAD = [
    (["unreadable"], "broken.png: unreadable image"),
    (["mixed"], "use --resize S"),
    (["emptyclass"], "dog: empty class folder"),
    (["range.npz"], "label 5 of image 2 is out of range 0..1"),
    (["negative.npz"], "label -1 of image 1 is out of range"),
    (["nolabels.npz"], "no 'labels' array"),
    (["float.npz"], "'images' must be uint8"),
    (["garbage.npz"], "not a readable .npz"),
    (["missing.npz"], "missing.npz: no such file"),
    (["--dataset", "cifar10", "--data-root", "cifar"], "no CIFAR10 files in cifar"),
    (["--dataset", "cifar10"], "give --data-root"),
    (["text.jsonl"], "DATA must be an image folder, a dataset folder, an .npz"),
    ([], "give DATA (an image folder, dataset folder, .npz or Hub dataset id) or --dataset"),
    (["range.npz", "--resize", "0"], "--resize: must be a positive integer"),
    (["mixed", "--crop-padding", "-1"], "--crop-padding"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_image_input(tmp_path, monkeypatch, cli, args, message):
    _bad_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    res = cli("run", *args, "--model", "resnet-tiny", "--models", "2", "--out", "run")
    assert res.code == 2, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert lines[0].startswith("memaudit: error: ")
    assert message in lines[0], lines[0]
    assert tree(tmp_path) == before  # nothing written


def test_cifar_missing_says_what_to_do(tmp_path, cli):
    res = cli(
        "run",
        "--dataset",
        "cifar100",
        "--data-root",
        tmp_path,
        "--model",
        "resnet-tiny",
        "--out",
        tmp_path / "run",
    )
    assert res.code == 2
    assert "download=True" in res.err and "CIFAR100" in res.err  # the one command to run
    assert not (tmp_path / "run").exists()


def test_text_model_refuses_image_data(tmp_path, cli):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0, 1]))
    res = cli("run", tmp_path / "d.npz", "--model", "gpt-neo-125M", "--out", tmp_path / "run")
    assert res.code == 2 and "image data needs an image --model" in res.err
    assert not (tmp_path / "run").exists()


def test_demo_config_runs(tmp_path, cli):
    """The README's image demo settings parse and run (a tiny version: 2 models, 1 epoch)."""
    import json

    root = _folder(tmp_path / "imgs")
    demo = ROOT / "fixtures" / "images" / "demo.toml"
    out = tmp_path / "run"
    res = cli("run", root, "--config", demo, "--models", "2", "--epochs", "1", "--out", out)
    assert res.code == 0, res.err
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["model"]["name"] == "resnet-tiny"
    assert cfg["image"] == {
        "dataset": None, "data_root": None, "resize": 16, "crop_padding": 0, "flip": True,
        "image_field": "image", "label_field": "label",
    }  # fmt: skip
    assert cfg["train"]["batch_size"] == 32 and cfg["extract"]["models"] == 0
    assert load_images(root, resize=16).images.shape[1:] == (16, 16, 3)
    assert np.load(out / "images.npz")["images"].shape == (6, 16, 16, 3)


def test_torchvision_cifar10_from_local_files(tmp_path, monkeypatch):
    """--dataset cifar10 reads torchvision's local files (here a tiny stand-in in the official
    layout; torchvision's md5 check is bypassed because the stand-in is not the real data)."""
    import pickle

    from torchvision.datasets import cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        data = rng.integers(0, 256, (2, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / f"data_batch_{k}", "wb") as f:
            pickle.dump({"data": data, "labels": [k % 10, (k + 1) % 10]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    data = load_images(None, dataset="cifar10", data_root=tmp_path)
    assert data.images.shape == (10, 32, 32, 3)
    assert data.labels.tolist()[:4] == [1, 2, 2, 3]
    assert data.class_names[0] == "c0" and data.ids[0] == "cifar10-train-00000"
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0]
    assert np.array_equal(data.images[0], first.reshape(3, 32, 32).transpose(1, 2, 0))
    assert load_images(None, "cifar10", tmp_path, resize=8).images.shape == (10, 8, 8, 3)


# -- hostile image data (issue 15) ---------------------------------------------------------------


def test_npz_whose_header_claims_27_tib_is_refused_before_allocating(tmp_path):
    import zipfile

    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (30000000, 1000, 1000, 1), }"
    header = header.ljust(118) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", npy)
        z.writestr("labels.npy", npy)
    with pytest.raises(MemauditError, match=r"bomb.npz: array 'images' claims .*27,939") as err:
        load_images(path)
    assert "\n" not in str(err.value)


def test_zero_images_with_resize_is_one_line(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, images=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros(0, np.int64))
    with pytest.raises(MemauditError, match="no images"):
        load_images(path, resize=4)


def test_decompression_bomb_png_is_one_line(tmp_path):
    """A 20000 x 20000 PNG (400 megapixels, over twice PIL's MAX_IMAGE_PIXELS): refused from its
    header, before any pixel is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    root = _folder(tmp_path / "imgs")
    (root / "cat" / "bomb.png").write_bytes(png)
    with pytest.raises(MemauditError, match=r"bomb.png: unreadable image \(.*decompression bomb"):
        load_images(root)


# -- Hugging Face image datasets ------------------------------------------------------------
def _hf_images(n=32, size=16, image="image", label="label", names=("cat", "ship"), rows=None):
    """A datasets.Dataset of n small images (a datasets.Image column) and ClassLabel labels;
    ``rows``: {row index: (image value, label)} overrides."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()  # saving would print one (the tests count stderr lines)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    imgs = [Image.fromarray(p) for p in pixels]
    labels = [i % len(names) for i in range(n)]
    for i, (img, lab) in (rows or {}).items():
        imgs[i], labels[i] = img, lab
    features = datasets.Features(
        {image: datasets.Image(), label: datasets.ClassLabel(names=list(names))}
    )
    return datasets.Dataset.from_dict({image: imgs, label: labels}, features=features), pixels


def test_hf_image_folder_runs_end_to_end(tmp_path, cli):
    """A save_to_disk image dataset (32 images of 16 x 16, two classes) through `memaudit run`
    with resnet-tiny: the pixels, labels and class names reach the run directory."""
    import json

    ds, pixels = _hf_images()
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "run"
    args = ["--model", "resnet-tiny", "--models", "2", "--epochs", "1", "--batch-size", "16"]
    res = cli("run", tmp_path / "hf", *args, "--crop-padding", "0", "--out", out)
    assert res.code == 0, res.err
    stored = np.load(out / "images.npz")
    assert np.array_equal(stored["images"], pixels)
    assert stored["labels"].tolist() == [i % 2 for i in range(32)]
    assert stored["class_names"].tolist() == ["cat", "ship"]
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert records[0]["id"] == "row1" and records[1]["text"] == "ship"
    assert len(list((out / "models").glob("*.npy"))) >= 2
    assert json.loads((out / "report.json").read_text())["modality"] == "image"


def test_hf_image_columns_named_by_options_and_string_labels(tmp_path):
    from memaudit.data.images import HFColumns

    datasets = pytest.importorskip("datasets")
    ds, pixels = _hf_images(n=6, image="img", label="y")
    ds = ds.cast_column("y", datasets.Value("int64")).map(
        lambda r, i: {"y": ["zebra", "ant"][r["y"]], "key": f"k{i}"}, with_indices=True
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(MemauditError, match=r"no column 'image' \(columns: img, y, key\); name"):
        load_images(tmp_path / "hf")
    cols = HFColumns(image="img", label="y", id="key")
    data = load_images(tmp_path / "hf", columns=cols, resize=8)
    assert data.class_names == ["ant", "zebra"] and data.labels.tolist()[:2] == [1, 0]
    assert data.ids[:2] == ["k0", "k1"] and data.images.shape == (6, 8, 8, 3)
    with pytest.raises(MemauditError, match="column 'y' holds Value values, not images"):
        load_images(tmp_path / "hf", columns=HFColumns(image="y", label="y"))


@pytest.mark.parametrize(
    "rows,message",
    [
        (
            {2: ({"bytes": b"not an image", "path": None}, 0)},
            r"hf: row 3: unreadable image \(not a known image format\)$",
        ),
        ({1: (None, 0)}, r"hf: row 2: missing image"),
        ({4: (None, None)}, r"hf: row 5: missing label \('label'\)"),
        ({0: (Image.new("RGB", (9, 9)), 1)}, r"hf: row 2: 16x16 pixels, but row 1 is 9x9"),
    ],
)
def test_bad_hf_image_rows_are_one_line_naming_the_row(tmp_path, cli, rows, message):
    import re

    ds, _ = _hf_images(n=6, rows=rows)
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "run"
    res = cli("run", tmp_path / "hf", "--model", "resnet-tiny", "--models", "2", "--out", out)
    assert res.code == 2 and res.err.count("\n") == 1, res.err
    assert re.search(message, res.err), res.err
    assert not out.exists()


def test_hf_image_dataset_from_a_hub_id(tmp_path, monkeypatch):
    """A Hub id loads through datasets.load_dataset (patched: no network in tests) with the
    split and revision, and runs as an image dataset."""
    datasets = pytest.importorskip("datasets")
    from memaudit.data import formats
    from memaudit.data.images import HFColumns

    ds, pixels = _hf_images(n=4)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: calls.append(kw) or ds)
    monkeypatch.setattr(formats, "_HUB_LOADED", {})
    monkeypatch.setattr(formats, "_offline", lambda: False)
    monkeypatch.chdir(tmp_path)
    data = load_images("someone/pets", columns=HFColumns(split="test", revision="abc123"))
    assert calls == [{"split": "test", "revision": "abc123"}]
    assert np.array_equal(data.images, pixels) and data.class_names == ["cat", "ship"]
