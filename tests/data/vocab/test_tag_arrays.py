"""The Arrow canonicaliser the counter uses (data/vocab/tag_arrays.py) equals the reference
TagCanonicalizer tag by tag, for the tag encodings the readers declare."""
from __future__ import annotations

import random
import urllib.parse

import pyarrow as pa
import pytest

from data.corpus.table import TableReader
from data.corpus.yfcc import YfccReader, format_line
from data.vocab.tag_arrays import ArrayCanonicalizer, re2_safe
from data.vocab.tags import Stoplist, TagCanonicalizer

CANON = TagCanonicalizer.from_files()


def tricky_tags(seed: int = 0, n: int = 4000) -> list[str]:
    alphabet = list("abcXYZ019 +_.'#-:=/%\t") + ["%2C", "%27", "%E7%8C%AB", "ß", "ﬁ", "猫", "’"]
    rng = random.Random(seed)
    made = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(n)]
    stop = ["photooftheday", "Photo+Of+The+Day", "canoneos5d", "Canon+EOS+5D", "iso100", "ISO+100", "50mm",
            "1/200", "geo:lat=1", "f2.8", "#2012", "a" * 40, "a" * 41, "+#a", "#+a", "  ", "#", "x#y"]
    return made + stop


def reader(source: str, tmp_path):
    if source == "yfcc100m":
        (tmp_path / "y.tsv").write_text(format_line({"photo_id": 1}))
        return YfccReader(tmp_path / "y.tsv")
    (tmp_path / "t.csv").write_text("key,tags\n1,x\n")
    return TableReader(tmp_path / "t.csv")


@pytest.mark.parametrize("source", ["yfcc100m", "csv"])
def test_array_canonicalizer_equals_reference_for_each_readers_encoding(source, tmp_path, shared_data):
    corpus = reader(source, tmp_path)
    sample = shared_data / "yfcc100m_sample" / "yfcc100m_dataset-head2000.unique.tsv"
    real = [t for line in sample.read_text().splitlines() for t in line.split("\t")[8].split(",")]
    raw = tricky_tags() + real
    vector = ArrayCanonicalizer(CANON, corpus.decode_tag, corpus.tag_encoding)
    assert vector.stop_regex is not None and not vector.regex_in_python  # the default runs in RE2
    assert vector(pa.array(raw)).to_pylist() == [CANON(corpus.decode_tag(t)) for t in raw]


def test_unsafe_stoplist_patterns_fall_back_to_python(tmp_path):
    stop = tmp_path / "stop.txt"
    # Python and RE2 read these differently or RE2 lacks them.
    stop.write_text("re:a{,2}b\nre:(?=ab)a.\nsunset\n")
    canon = TagCanonicalizer(Stoplist.load(stop))
    corpus = reader("yfcc100m", tmp_path)
    vector = ArrayCanonicalizer(canon, corpus.decode_tag, corpus.tag_encoding)
    assert vector.regex_in_python
    raw = ["b", "aab", "aaab", "a{,2}b", "ab", "ax", "sunset", "Sun+Set"] + tricky_tags(1, 500)
    assert vector(pa.array(raw)).to_pylist() == [canon(urllib.parse.unquote_plus(t)) for t in raw]
    assert not re2_safe("[[:alpha:]]") and re2_safe("(iso|f)[0-9]+")
