"""Similarity of linked records: lexical (TF-IDF) for text, pixel for images."""

from __future__ import annotations

import numpy as np
import pytest

from memaudit.findings.similarity import alike_pairs, lexical_similarity

TEXTS = [
    "Q: who wrote the novel pride and prejudice A: Jane Austen",
    "Q: who wrote the novel pride and prejudice A: Jane Austen",
    "Q: who wrote the novel pride and prejudice A: Jane Dublin",
    "Q: what is the boiling point of water at sea level A: 100 degrees Celsius",
    "Q: how many moons does mars have A: two",
]


def test_lexical_similarity_identical_edited_unrelated():
    sim = lexical_similarity(TEXTS, np.array([[0, 1], [0, 2], [0, 3], [3, 4], [2, 2]]))
    assert sim.shape == (5,)
    assert sim[0] == pytest.approx(1.0) and sim[4] == pytest.approx(1.0)
    assert sim[1] > 0.75  # one-token edit
    assert sim[2] < 0.3 and sim[3] < 0.3  # unrelated (shared "Q: ... A:" template only)
    assert lexical_similarity(TEXTS, np.zeros((0, 2), dtype=int)).shape == (0,)
    with pytest.raises(ValueError):
        lexical_similarity(TEXTS, np.array([[0, 5]]))


def test_pixel_similarity_shifted_flipped_and_unrelated():
    from memaudit.findings.similarity import pixel_similarity

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    base[:, :16] //= 3  # structure beyond noise, so a one-pixel shift keeps most of it
    shifted = np.roll(base, 1, axis=1)
    flipped = base[:, ::-1]
    darker = (base * 0.7).astype(np.uint8)
    other = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    images = np.stack([base, shifted, flipped, darker, other])
    sim = pixel_similarity(images, np.array([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4]]))
    assert sim[0] == pytest.approx(1.0) and sim[2] == pytest.approx(1.0)  # a flip is free
    assert sim[3] > 0.99 and sim[1] > 0.7
    assert sim[4] < 0.5
    assert pixel_similarity(images, np.empty((0, 2))).shape == (0,)


def test_link_similarity_follows_the_modality():
    from memaudit.findings.similarity import link_similarity, pixel_similarity
    from memaudit.modality import IMAGE, TEXT

    pairs = np.array([[0, 1], [0, 2]])
    np.testing.assert_array_equal(
        link_similarity(TEXT, pairs, TEXTS, None), lexical_similarity(TEXTS, pairs)
    )
    images = np.random.default_rng(1).integers(0, 256, (len(TEXTS), 8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(
        link_similarity(IMAGE, pairs, TEXTS, images), pixel_similarity(images, pairs)
    )
    with pytest.raises(ValueError, match="image runs need the images"):
        link_similarity(IMAGE, pairs, TEXTS, None)


def test_alike_pairs_asks_in_chunks_and_keeps_the_order():
    pairs = np.column_stack([np.arange(11), np.arange(11) + 1])
    sizes = []

    def alike(p):
        sizes.append(len(p))
        return p[:, 0] % 3 == 0

    got = alike_pairs(alike, pairs, chunk=4)
    assert sizes == [4, 4, 3]
    assert got.tolist() == [[0, 1], [3, 4], [6, 7], [9, 10]]
    assert alike_pairs(alike, np.zeros((0, 2), dtype=np.int64)).shape == (0, 2)
