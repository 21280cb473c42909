import json

import pytest

from memaudit.data.plant import plant
from memaudit.data.records import RecordFormat, load_records
from memaudit.errors import MemauditError
from tests.conftest import DEMO_DATA, DEMO_SOURCE, TINY_MODEL, write_jsonl


def _groups(objects):
    out = {}
    for o in objects:
        if "group" in o:
            out.setdefault(o["group"], []).append(o)
    return out


def test_word_level_plant_on_nq(tmp_path):
    objs = plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=7, copies=4, seed=1)
    assert len(objs) == 220 + 7 * 3
    groups = _groups(objs)
    assert len(groups) == 7 and all(len(g) == 4 for g in groups.values())
    for members in groups.values():
        original = members[0]
        assert len({m["answer"][0] for m in members}) == 4  # all distinct
        for copy in members[1:]:
            assert copy["question"] == original["question"]  # only the completion is edited
            a, b = original["answer"][0].split(), copy["answer"][0].split()
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1
            assert copy["answer"][1:] == original["answer"][1:]
    # Seeded: the same call gives the same file.
    assert objs == plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=7, copies=4, seed=1)
    assert objs != plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=7, copies=4, seed=2)


def test_token_level_plant_changes_one_token(tmp_path):
    from memaudit.ensemble.models import load_tokenizer

    tok = load_tokenizer(str(TINY_MODEL))
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": f"Q: question {k} A:", "completion": f" the answer number {k} is here"}
            for k in range(10)
        ],
    )
    objs = plant(path, RecordFormat(), groups=3, copies=3, seed=0, tokenizer=tok)
    for members in _groups(objs).values():
        base = tok.encode(members[0]["completion"])
        for copy in members[1:]:
            edited = tok.encode(copy["completion"])
            assert copy["prompt"] == members[0]["prompt"]
            assert edited != base
            # One replaced token; re-tokenizing the decoded text may merge across the edit.
            assert abs(len(edited) - len(base)) <= 2


def test_planted_output_loads_with_groups(tmp_path, cli):
    out = tmp_path / "planted.jsonl"
    res = cli(
        "plant", DEMO_SOURCE, "--preset", "nq", "--groups", "5", "--copies", "3", "--out", out
    )
    assert res.code == 0, res.err
    records = load_records(out, RecordFormat(preset="nq"))
    assert len(records) == 230
    assert sum(r.group is not None for r in records) == 15
    assert len({r.id for r in records}) == 230


def test_bundled_demo_has_ground_truth():
    records = load_records(DEMO_DATA, RecordFormat(preset="nq"))
    groups = [r.group for r in records if r.group]
    assert len(records) == 300 and len(groups) == 100 and len(set(groups)) == 20
    first = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()][:1]
    assert set(first[0]) >= {"id", "question", "answer"}


def test_bad_plant_options(tmp_path):
    with pytest.raises(MemauditError, match="--groups"):
        plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=0, copies=3)
    with pytest.raises(MemauditError, match="--copies"):
        plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=2, copies=1)
    with pytest.raises(MemauditError, match="--edits"):
        plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=2, copies=3, edits=0)


def test_ranges_of_group_sizes_and_edits(tmp_path, cli):
    out = tmp_path / "ranged.jsonl"
    res = cli(
        "plant", DEMO_SOURCE, "--preset", "nq", "--groups", "30", "--copies", "2-5",
        "--edits", "1-3", "--seed", "3", "--out", out,
    )  # fmt: skip
    assert res.code == 0, res.err
    objs = [json.loads(line) for line in out.read_text().splitlines()]
    groups = _groups(objs)
    sizes = [len(g) for g in groups.values()]
    assert len(groups) == 30 and min(sizes) == 2 and max(sizes) == 5 and len(set(sizes)) == 4
    changed = []
    for members in groups.values():
        a = members[0]["answer"][0].split()
        for copy in members[1:]:
            b = copy["answer"][0].split()
            if len(a) == len(b):
                changed.append(sum(x != y for x, y in zip(a, b, strict=True)))
    # 1 to 3 words replaced (a word may be hit twice, so at most 3, at least 1).
    assert min(changed) >= 1 and max(changed) == 3 and 2 in changed
    # A fixed size and one edit draw nothing extra: the old plantings are unchanged.
    fixed = plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=7, copies=(4, 4), seed=1)
    assert fixed == plant(DEMO_SOURCE, RecordFormat(preset="nq"), groups=7, copies=4, seed=1)
    bad = cli("plant", DEMO_SOURCE, "--preset", "nq", "--groups", "3", "--copies", "5-2",
              "--out", out)  # fmt: skip
    assert bad.code == 2 and "--copies" in bad.err and "\n" not in bad.err.strip()


def test_plant_refuses_to_overwrite_its_input(tmp_path, cli):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"record {i} a b c"} for i in range(4)])
    before = data.read_bytes()
    result = cli("plant", data, "--groups", "1", "--out", data)
    assert result.code == 2 and "is the input file" in result.err
    assert data.read_bytes() == before
    result = cli("plant", data, "--groups", "1", "--out", tmp_path / "." / "d.jsonl")
    assert result.code == 2 and data.read_bytes() == before
