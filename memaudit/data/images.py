"""Image datasets in, validated image records out.

Three sources, all read into one :class:`ImageData` (uint8 N x H x W x 3 pixels, integer labels,
class names, ids, optional planted groups):

* a folder in ImageFolder layout (``DATA/<class>/<image>``; classes in sorted order, as
  torchvision's ImageFolder numbers them; files with other extensions are ignored);
* an ``.npz`` with ``images`` (N, H, W, C uint8, C = 1 or 3, or N x H x W) and ``labels`` (N,
  integers), optionally ``class_names``, ``ids`` and ``groups`` (what ``memaudit plant`` writes;
  an empty group means none); read with ``allow_pickle=False``;
* torchvision's CIFAR-10/100 training set from a local root (``--dataset cifar10 --data-root``),
  never downloaded;
* a Hugging Face image dataset: a ``save_to_disk`` folder or a Hub id (read by
  memaudit.data.formats), with an image column (a ``datasets.Image`` feature; ``--image-field``,
  default ``image``) and a label column (``--label-field``, default ``label``: a ``ClassLabel``,
  integers, or class names, numbered in sorted order). Ids come from ``--id-field`` (else an
  ``id`` column, else ``row<N>``); every bad row (an undecodable image, a missing label) is one
  error naming the row.

``--resize S`` resizes every image to S x S (bilinear); without it, images of different sizes are
an error. Every problem is a :class:`MemauditError` naming the file, raised before anything is
written. The records of an image run carry the class name as their text (shown in reports); the
pixels go to ``RUN/images.npz``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memaudit.data import formats
from memaudit.data.records import Record
from memaudit.errors import MemauditError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DATASETS = ("cifar10", "cifar100")


@dataclass
class ImageData:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    ids: list[str]
    groups: list[str | None]

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> list[Record]:
        return [
            Record(i, self.ids[i], self.class_names[int(lab)], None, self.groups[i], i)
            for i, lab in enumerate(self.labels)
        ]

    def sha256(self) -> str:
        """The dataset's identity for resuming: what training sees (pixels after --resize,
        labels, ids, groups), independent of the file format it came from."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        h.update("\0".join(self.ids).encode())
        h.update("\0".join(g or "" for g in self.groups).encode())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        from memaudit.store.io import atomic_write_bytes

        atomic_write_bytes(path, npz_bytes(self))


def npz_bytes(data: ImageData) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=data.images,
        labels=data.labels.astype(np.int64),
        class_names=np.array(data.class_names, dtype=str),
        ids=np.array(data.ids, dtype=str),
        groups=np.array([g or "" for g in data.groups], dtype=str),
    )
    return buf.getvalue()


def is_image_source(data: str | Path | None, dataset: str | None) -> bool:
    """Whether DATA (or --dataset) names image data rather than JSON Lines."""
    if dataset is not None:
        return True
    if data is None:
        return False
    path = Path(data)
    if formats.is_hf_dataset(path):  # a dataset folder of images, or of text records
        return _has_image_column(path)
    return path.is_dir() or path.suffix.lower() == ".npz"


def _has_image_column(path: Path) -> bool:
    try:
        import datasets

        features = formats.load_dataset(path).features
    except (ImportError, MemauditError):
        return False  # read as records, which reports the problem
    return any(isinstance(f, datasets.Image) for f in features.values())


@dataclass(frozen=True)
class HFColumns:
    """Where a Hugging Face image dataset keeps what an image run reads (--image-field,
    --label-field, --id-field, --split, --revision)."""

    image: str = "image"
    label: str = "label"
    id: str | None = None
    split: str = "train"
    revision: str | None = None


def load_images(
    data: str | Path | None,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    resize: int | None = None,
    columns: HFColumns | None = None,
) -> ImageData:
    if resize is not None and (isinstance(resize, bool) or resize < 1):
        raise MemauditError(f"--resize: must be a positive integer, got {resize!r}")
    if dataset is not None:
        loaded = _load_torchvision(dataset, data_root)
        if resize is not None:
            loaded.images = np.stack([_resize(img, resize) for img in loaded.images])
    else:
        if data is None:
            raise MemauditError("no data: give DATA (an image folder or .npz) or --dataset")
        path = Path(data)
        if formats.is_hub_id(data) or formats.is_hf_dataset(path):
            loaded = _load_hf(data, columns or HFColumns(), resize)
        elif not path.exists():
            raise MemauditError(f"{path}: no such file or folder")
        else:
            loaded = _load_folder(path, resize) if path.is_dir() else load_npz(path, resize)
    if len(loaded) < 2:
        raise MemauditError(f"{data or dataset}: {len(loaded)} images; an audit needs at least 2")
    return loaded


def _one_size(
    arr: np.ndarray, resize: int | None, first: tuple | None, where: Any, name: Any
) -> tuple[np.ndarray, tuple | None]:
    """``arr`` brought to resize x resize, or else held to the first image's size (``first``:
    (its height and width, its name), set by the first image); returns (arr, first)."""
    if resize is not None:
        return _resize(arr, resize), first
    if first is None:
        return arr, (arr.shape[:2], name)
    if arr.shape[:2] != first[0]:
        raise MemauditError(
            f"{where}: {arr.shape[1]}x{arr.shape[0]} pixels, but {first[1]} is "
            f"{first[0][1]}x{first[0][0]}; use --resize S to bring all images to S x S"
        )
    return arr, first


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _load_folder(root: Path, resize: int | None) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MemauditError(
            f"{root}: no class folders; expected ImageFolder layout {root}/<class>/<image>"
        )
    images, labels, ids = [], [], []
    first: tuple[tuple[int, int], Path] | None = None
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise MemauditError(
                f"{root / name}: empty class folder (no {', '.join(IMAGE_EXTENSIONS)} files)"
            )
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (
                UnidentifiedImageError,
                OSError,
                ValueError,
                Image.DecompressionBombError,
            ) as exc:
                # DecompressionBombError: more pixels than PIL's MAX_IMAGE_PIXELS allows twice
                # over (a decompression bomb); refused before decoding.
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise MemauditError(f"{f}: unreadable image ({reason})") from None
            arr, first = _one_size(arr, resize, first, f, f)
            images.append(arr)
            labels.append(label)
            ids.append(f.relative_to(root).as_posix())
    return ImageData(
        np.stack(images), np.array(labels, dtype=np.int64), classes, ids, [None] * len(ids)
    )


def _load_hf(data: str | Path, cols: HFColumns, resize: int | None) -> ImageData:
    """A Hugging Face image dataset's images and labels, decoded row by row with PIL (the
    column is read undecoded, so that one bad image is an error naming its row)."""
    import io

    import datasets
    from PIL import Image

    ds = formats.load_dataset(data, cols.split, cols.revision)
    names = ", ".join(ds.column_names)
    for column, option in ((cols.image, "--image-field"), (cols.label, "--label-field")):
        if column not in ds.column_names:
            raise MemauditError(
                f"{data}: no column '{column}' (columns: {names}); name it with {option}"
            )
    if cols.id is not None and cols.id not in ds.column_names:
        raise MemauditError(f"{data}: no id column '{cols.id}' (--id-field; columns: {names})")
    feature = ds.features[cols.image]
    if not isinstance(feature, datasets.Image):
        raise MemauditError(
            f"{data}: column '{cols.image}' holds {type(feature).__name__} values, not images "
            "(a datasets.Image feature); name the image column with --image-field"
        )
    ds = ds.cast_column(cols.image, datasets.Image(decode=False))
    label_feature = ds.features[cols.label]
    class_labels = isinstance(label_feature, datasets.ClassLabel)
    id_column = cols.id or ("id" if "id" in ds.column_names else None)
    images, raw_labels, ids = [], [], []
    first: tuple[tuple[int, int], str] | None = None
    for row, obj in enumerate(ds, start=1):
        where = f"{data}: row {row}"
        value, label = obj[cols.image], obj[cols.label]
        # ClassLabel's -1 is "no label" in datasets.
        if label is None or label == "" or (class_labels and label == -1):
            raise MemauditError(f"{where}: missing label ('{cols.label}')")
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise MemauditError(
                f"{where}: label ('{cols.label}') must be a class id or name, not "
                f"{type(label).__name__}"
            )
        arr = _decode_hf(value, where, io, Image)
        arr, first = _one_size(arr, resize, first, where, f"row {row}")
        images.append(arr)
        raw_labels.append(label)
        rid = obj[id_column] if id_column is not None else None
        if id_column is not None and (rid is None or rid == ""):
            raise MemauditError(f"{where}: missing id ('{id_column}')")
        ids.append(str(rid) if rid is not None else f"row{row}")
    if not images:
        raise MemauditError(f"{data}: no images; an audit needs at least 2")
    if len(set(ids)) != len(ids):
        raise MemauditError(f"{data}: ids in column '{id_column}' are not unique")
    labels, class_names = _hf_labels(data, raw_labels, label_feature, class_labels)
    return ImageData(np.stack(images), labels, class_names, ids, [None] * len(ids))


def _decode_hf(value, where: str, io, Image) -> np.ndarray:
    """One undecoded datasets.Image value ({"bytes", "path"}) as uint8 H x W x 3."""
    from PIL import UnidentifiedImageError

    if not isinstance(value, dict) or (value.get("bytes") is None and not value.get("path")):
        raise MemauditError(f"{where}: missing image")
    source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
    try:
        with Image.open(source) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:  # its message names a BytesIO object: no use to anyone
        raise MemauditError(f"{where}: unreadable image (not a known image format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MemauditError(f"{where}: unreadable image ({reason})") from None


def _hf_labels(data, raw: list, feature, class_labels: bool) -> tuple[np.ndarray, list[str]]:
    """Labels as class indices and the class names: a ClassLabel's own names, integer ids
    (named by their numbers), or names (numbered in sorted order, as ImageFolder does)."""
    if all(isinstance(x, str) for x in raw):
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[x] for x in raw], dtype=np.int64), names
    if not all(isinstance(x, int) for x in raw):
        raise MemauditError(f"{data}: labels mix class ids and names")
    labels = np.array(raw, dtype=np.int64)
    names = list(feature.names) if class_labels else [str(c) for c in range(int(labels.max()) + 1)]
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        raise MemauditError(
            f"{data}: row {bad[0] + 1}: label {labels[bad[0]]} is out of range 0..{len(names) - 1}"
        )
    return labels, names


def stored_images(run) -> ImageData | None:
    """An image run's pixels and labels as its run directory holds them (``images.npz``)."""
    path = run.file("images.npz")
    return load_npz(path, None) if path.exists() else None


def load_npz(path: Path, resize: int | None) -> ImageData:
    import zipfile

    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MemauditError(f"{path}: not a readable .npz ({reason})") from None
    for key in ("images", "labels"):
        if key not in arrays:
            raise MemauditError(f"{path}: no '{key}' array (has: {', '.join(arrays) or 'none'})")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8:
        raise MemauditError(f"{path}: 'images' must be uint8, not {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MemauditError(
            f"{path}: 'images' must be N x H x W x C with C = 1 or 3, got shape {images.shape}"
        )
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    n = len(images)
    if n == 0:
        raise MemauditError(f"{path}: no images; an audit needs at least 2")
    if labels.shape != (n,):
        raise MemauditError(f"{path}: 'labels' must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise MemauditError(f"{path}: 'labels' must be integers, not {labels.dtype}")
    labels = labels.astype(np.int64)
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"].tolist()]
    else:
        class_names = [str(c) for c in range(int(labels.max(initial=0)) + 1)]
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if len(bad):
        raise MemauditError(
            f"{path}: label {labels[bad[0]]} of image {bad[0]} is out of range "
            f"0..{len(class_names) - 1} ({len(bad)} such labels)"
        )
    ids = _strings(arrays, "ids", n, path) or [f"img{i:05d}" for i in range(n)]
    if len(set(ids)) != n:
        raise MemauditError(f"{path}: 'ids' are not unique")
    groups = _strings(arrays, "groups", n, path) or [""] * n
    if resize is not None:
        images = np.stack([_resize(img, resize) for img in images])
    return ImageData(
        np.ascontiguousarray(images), labels, class_names, ids, [g or None for g in groups]
    )


def _check_npz_sizes(path: Path) -> None:
    """Refuse an .npz whose arrays claim more bytes than they hold (a forged header, say
    27 TiB) or than this machine's memory, before numpy allocates them."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # np.load reports it, one line
    limit = _memory_bytes()
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
            except Exception:  # noqa: BLE001 - any malformed header: np.load reports it
                return
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            name = info.filename.removesuffix(".npy")
            if need > info.file_size or (limit and need > limit):
                raise MemauditError(
                    f"{path}: array '{name}' claims {shape} {dtype} ({need / 2**30:,.1f} GiB), "
                    f"but the file holds {info.file_size:,} bytes for it"
                    + (f" and this machine has {limit / 2**30:,.1f} GiB" if limit else "")
                )


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _strings(arrays: dict, key: str, n: int, path: Path) -> list[str] | None:
    if key not in arrays:
        return None
    values = arrays[key]
    if values.shape != (n,) or values.dtype.kind not in "US":
        raise MemauditError(
            f"{path}: '{key}' must be {n} strings, got {values.dtype} {values.shape}"
        )
    return [str(v) for v in values.tolist()]


def _load_torchvision(dataset: str, root: str | Path | None) -> ImageData:
    if dataset not in DATASETS:
        raise MemauditError(f"--dataset: '{dataset}' is not one of {', '.join(DATASETS)}")
    if root is None:
        raise MemauditError(f"--dataset {dataset}: give --data-root, the folder with its files")
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(str(root), train=True, download=False)
    except RuntimeError:
        # torchvision says "use download=True"; tests and audits never download on their own.
        folder = cls.base_folder
        raise MemauditError(
            f"--dataset {dataset}: no {dataset.upper()} files in {root} (expected {root}/"
            f'{folder}); fetch them once with: python -c "from torchvision import datasets; '
            f"datasets.{cls.__name__}('{root}', download=True)\""
        ) from None
    labels = np.asarray(ds.targets, dtype=np.int64)
    n = len(labels)
    return ImageData(
        np.ascontiguousarray(ds.data),
        labels,
        list(ds.classes),
        [f"{dataset}-train-{i:05d}" for i in range(n)],
        [None] * n,
    )
