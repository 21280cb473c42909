"""Plant near-duplicate groups in image data, the image counterpart of :mod:`memaudit.data.plant`.

Each group is an original image plus ``copies - 1`` edited copies. Every copy gets the edits a
scraped dataset's duplicates carry, each drawn from the seed:

* a small crop and shift: a window of 85-100% of the side at a random offset, resized back;
* a horizontal flip with probability 1/2;
* brightness and contrast factors in [0.8, 1.2] (PIL ImageEnhance);
* JPEG re-encoding at quality 60-90 (PIL).

The output is an ``.npz`` that ``memaudit run`` reads (images, labels, class_names, ids,
groups), with each group's copies right after its original; copies keep the original's label,
ids are ``<id>-dup<k>`` and groups ``g000``, ``g001``, ... The report scores its clusters against
these groups (findings.score_against_groups), as for text.
"""

from __future__ import annotations

import io

import numpy as np

from memaudit.data.images import ImageData
from memaudit.errors import MemauditError


def edit_image(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One realistic near-duplicate of img (uint8 H x W x 3)."""
    from PIL import Image, ImageEnhance

    h, w = img.shape[:2]
    im = Image.fromarray(img)
    scale = rng.uniform(0.85, 1.0)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    im = im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def plant_images(data: ImageData, groups: int, copies: int, seed: int = 0) -> ImageData:
    """The planted dataset: every image, plus copies after each chosen original."""
    n = len(data)
    if groups < 1 or groups > n:
        raise MemauditError(f"--groups: must be between 1 and {n} (the image count)")
    if copies < 2:
        raise MemauditError("--copies: must be at least 2 (the original and one edited copy)")
    if any(g is not None for g in data.groups):
        raise MemauditError("plant: the data already has planted groups; plant into the original")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(n, size=groups, replace=False).tolist())
    group_of = {idx: f"g{g:03d}" for g, idx in enumerate(chosen)}
    taken = set(data.ids)
    images, labels, ids, out_groups = [], [], [], []
    for i in range(n):
        images.append(data.images[i])
        labels.append(data.labels[i])
        ids.append(data.ids[i])
        out_groups.append(group_of.get(i))
        if i not in group_of:
            continue
        for c in range(1, copies):
            copy_id = f"{data.ids[i]}-dup{c}"
            if copy_id in taken:
                raise MemauditError(f"plant: planted id '{copy_id}' collides with an existing id")
            taken.add(copy_id)
            images.append(edit_image(data.images[i], rng))
            labels.append(data.labels[i])
            ids.append(copy_id)
            out_groups.append(group_of[i])
    return ImageData(
        np.stack(images), np.array(labels, dtype=np.int64), list(data.class_names), ids, out_groups
    )
