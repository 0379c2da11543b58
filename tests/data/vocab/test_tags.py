"""Tag canonicalisation: the documented rules, case by case."""
import pytest

from data.errors import UserError
from data.vocab.tags import Stoplist, TagCanonicalizer, normalize

canon = TagCanonicalizer.from_files()


@pytest.mark.parametrize("raw", ["brown bear", "brown+bear", "brown_bear", "Brown-Bear", "#BrownBear",
                                 "  #brown  bear ", "ＢＲＯＷＮ ＢＥＡＲ", "brown.bear"])
def test_multiword_forms_join(raw):
    assert canon(raw) == "brownbear"


@pytest.mark.parametrize("raw,expected", [
    ("Straße", "strasse"),            # casefold, not lower
    ("ﬁsh", "fish"),                  # NFKC ligature
    ("猫", "猫"),                      # CJK kept
    ("denise's", "denises"),
    ("denise’s", "denises"),
    ("tate", "tate"),
])
def test_normalisation(raw, expected):
    assert canon(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "#", "2013", "２０１３", "007", "a" * 41,
                                 "photooftheday", "Photo Of The Day", "canon", "Canon EOS 5D Mark II",
                                 "nikon d90", "iPhone 4s", "ISO100", "f2.8", "50mm", "1/200",
                                 "geo:lat=51.05", "uploaded:by=flickrmobile"])
def test_dropped(raw):
    assert canon(raw) is None


def test_length_limit_is_configurable():
    assert TagCanonicalizer(max_length=50)("a" * 41) == "a" * 41


def test_counts_once_per_image():
    assert canon.canonical_set(["Brown Bear", "#brownbear", "river", "2012", "River"]) == ["brownbear", "river"]


def test_stoplist_file(tmp_path):
    path = tmp_path / "stop.txt"
    path.write_text("# comment\nPhoto Of The Day\nre:sunset[0-9]+\n")
    stop = Stoplist.load(path)
    c = TagCanonicalizer(stop)
    assert c("photooftheday") is None and c("sunset12") is None and c("sunset") == "sunset"
    assert len(stop.sha256) == 64
    assert TagCanonicalizer(Stoplist.load(None))("photooftheday") == "photooftheday"


def test_stoplist_errors(tmp_path):
    with pytest.raises(UserError, match="cannot read stoplist"):
        Stoplist.load(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("re:(unclosed\n")
    with pytest.raises(UserError, match="bad.txt:1"):
        Stoplist.load(bad)


def test_normalize_is_idempotent():
    for raw in ["Brown-Bear", "Straße", "ＡＢＣ", "x y_z"]:
        assert normalize(normalize(raw)) == normalize(raw)
