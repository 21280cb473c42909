"""The deduplicator: planted exact and near copies found, unrelated records not; the three-way
table against influence clusters."""

import numpy as np

from memaudit.findings.dedup import DedupResult, image_groups, text_groups, three_way
from tests.conftest import ROOT

WORDS = [
    "river",
    "mountain",
    "copper",
    "lantern",
    "violet",
    "harbor",
    "engine",
    "silver",
    "meadow",
    "falcon",
    "orbit",
    "pepper",
    "canyon",
    "marble",
    "thunder",
    "velvet",
    "glacier",
    "ember",
    "quartz",
    "willow",
    "signal",
    "tundra",
    "cobalt",
    "saddle",
]


def sentences(n, seed=0, length=30):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=length)) + f" {k}" for k in range(n)]


def test_text_groups_find_exact_and_near_copies_not_unrelated():
    texts = sentences(60)
    texts.append(texts[3])  # 60: exact copy of 3
    texts.append(texts[5].replace(texts[5].split()[6], "zebra", 1))  # 61: one word edited
    texts.append("  " + texts[9].upper() + " ")  # 62: case and whitespace only
    d = text_groups(texts)
    pairs = {tuple(p) for p in d.pairs.tolist()}
    assert {(3, 60), (5, 61), (9, 62)} <= pairs
    assert pairs == {(3, 60), (5, 61), (9, 62)}  # nothing among the unrelated sentences
    assert d.group_of[3] == d.group_of[60] >= 0 and d.group_of[0] == -1
    assert len(d.groups) == 3 and d.similarity.min() >= 0.8
    # Word 5-grams lose the one-word edit (it breaks 5 of the 27 shingles) but keep the rest.
    w = {tuple(p) for p in text_groups(texts, unit="word").pairs.tolist()}
    assert (3, 60) in w and (5, 61) not in w


def test_image_groups_find_copies_and_mirrors_not_unrelated():
    # 80 real CIFAR-10 images (unrelated), one exact copy, one mirrored and brightened copy.
    imgs = np.load(ROOT / "fixtures" / "images" / "cifar10_demo.npz")["images"][:80]
    copy = imgs[2].copy()
    mirror = np.clip(imgs[7][:, ::-1].astype(float) * 1.1 + 10, 0, 255)
    data = np.concatenate([imgs, copy[None], mirror[None]]).astype(np.uint8)
    d = image_groups(data)
    pairs = {tuple(p) for p in d.pairs.tolist()}
    assert pairs == {(2, 80), (7, 81)}


def test_three_way_table_on_a_planted_set():
    # 10 records. Dedup groups: {0, 1, 2}, {3, 4}, {5, 6}. Influence clusters: {0, 1}, {3, 4},
    # {7, 8} (no textual overlap). So: confirmed pairs (0,1), (3,4); dedup only (0,2), (1,2),
    # (5,6); influence only (7,8).
    group_of = np.array([0, 0, 0, 1, 1, 2, 2, -1, -1, -1])
    cluster_of = np.array([0, 0, -1, 1, 1, -1, -1, 2, 2, -1])
    d = DedupResult(
        "minhash", {}, np.zeros((0, 2), int), np.zeros(0), group_of, [[0, 1, 2], [3, 4], [5, 6]]
    )
    calls = []

    def evidence(pairs):
        calls.append(pairs.tolist())
        return [{"influence_ab": 0.01} for _ in pairs]

    t = three_way(d, cluster_of, evidence)
    assert t["dedup_pairs"] == 5 and t["cluster_pairs"] == 3
    assert t["confirmed"]["pairs"] == 2 and t["confirmed"]["groups"] == 2
    assert t["dedup_only"]["pairs"] == 3 and t["dedup_only"]["groups"] == 1
    assert t["influence_only"]["pairs"] == 1 and t["influence_only"]["clusters"] == 1
    assert t["influence_only"]["examples"] == [{"cluster": 2, "members": [7, 8]}]
    assert [e["pair"] for e in t["dedup_only"]["examples"]] == [[0, 2], [5, 6]]
    assert calls == [[[0, 2], [5, 6]]]
    assert t["dedup_only"]["examples"][0]["influence_ab"] == 0.01
