"""vocab.json round trip, alias lookup and clear errors on bad files."""
import json

import pytest

from data.errors import UserError
from data.vocab.vocabulary import Label, Vocabulary


def make_vocab():
    return Vocabulary([Label(0, "dog", 10, ["puppy", "doggy"], "n02084071"),
                       Label(1, "brownbear", 5, ["ursus arctos"])],
                      canonicalization={"max_length": 40})


def test_round_trip_and_lookup(tmp_path):
    path = tmp_path / "vocab.json"
    make_vocab().save(path)
    vocab = Vocabulary.load(path)
    assert vocab.tags == ["dog", "brownbear"]
    assert vocab.labels[0].synset == "n02084071"
    assert vocab.label_ids(["Puppy", "#Brown Bear", "cat", "Ursus-Arctos"]) == [0, 1]
    assert vocab.label_ids(["cat"]) == []


@pytest.mark.parametrize("content,match", [
    ("{", "cannot read vocabulary"),
    ('{"format": "other"}', "not an openwsl vocab.json"),
    ('{"format": "openwsl-vocab", "version": 99, "labels": []}', "format version 99"),
    ('{"format": "openwsl-vocab", "version": 1, "labels": [{"id": 1, "tag": "a", "count": 1}]}', "dense"),
    ('{"format": "openwsl-vocab", "version": 1, "labels": [{"tag": "a"}]}', "malformed label"),
])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        Vocabulary.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")


def test_saved_file_is_plain_json(tmp_path):
    path = tmp_path / "vocab.json"
    make_vocab().save(path)
    obj = json.loads(path.read_text())
    assert obj["version"] == 1 and obj["num_labels"] == 2 and not list(tmp_path.glob(".*.tmp"))
