"""The parallel exact tag counter against an independent, straightforward count."""
from __future__ import annotations

import bz2
import random
from collections import Counter
from pathlib import Path

import pytest

import data.vocab.counting as tag_counts
import data.vocab.tag_arrays as array_canonicalizer
from data.corpus.table import TableReader
from data.corpus.yfcc import COLUMNS_23, YfccReader, encode_tags, format_line
from data.vocab.counting import count_tags
from data.vocab.tags import TagCanonicalizer

CANON = TagCanonicalizer.from_files()
# Spellings that canonicalise together ('brownbear'), stoplisted and digit-only tags, CJK, and a
# long tail, so that once-per-image and the drop rules matter.
HEAD = ["Brown Bear", "brown_bear", "#BrownBear", "river", "River", "sunset", "canon", "2012",
        "猫", "grizzly", "lake", "photooftheday", "a b", "ab"]


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        tags = [rng.choice(HEAD) if rng.random() < 0.5 else f"tail{int(rng.paretovariate(1.0))}"
                for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 8]))]
        lines.append(format_line({
            "photo_id": 1000 + i, "user_tags": encode_tags(tags), "title": "t", "marker": int(i % 97 == 0),
            "license_url": "http://creativecommons.org/licenses/by/2.0/"}))
        if i % 501 == 0:
            lines.append("broken\tline\n")
    path.write_text("".join(lines), encoding="utf-8")


def independent_count(path: Path, label_of: dict[str, str] | None = None) -> tuple[Counter, Counter, int]:
    """Per-key image counts, the keys-per-image histogram and the image count, one line at a time."""
    import urllib.parse
    counts, per_image, images = Counter(), Counter(), 0
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = line.split("\t")
        if len(cells) != len(COLUMNS_23) or cells[-1] == "1":
            continue
        images += 1
        canonical = CANON.canonical_set(urllib.parse.unquote_plus(t) for t in cells[8].split(",") if t)
        keys = set(canonical) if label_of is None else {label_of[c] for c in canonical if c in label_of}
        counts.update(keys)
        per_image[len(keys)] += 1
    return counts, per_image, images


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("counts") / "yfcc.tsv"
    write_corpus(path, 3000)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_exact_counts(corpus, workers):
    result = count_tags(YfccReader(corpus, block_size=4096), CANON, workers=workers, progress=False)
    counts, per_image, images = independent_count(corpus)
    assert result.counts == dict(counts)
    assert "brownbear" in result.counts and "canon" not in result.counts and "2012" not in result.counts
    assert result.images == images and result.keys_per_image == dict(per_image)
    assert result.images_with_tags == images - per_image[0]
    assert result.skipped == {"video": 31}
    assert result.malformed.counts == {"wrong column count": 6}
    assert result.malformed.examples["wrong column count"] == [2, 504, 1006, 1508, 2010, 2512]
    assert result.rows == 3006


def test_once_per_image_after_canonicalisation(tmp_path):
    path = tmp_path / "yfcc.tsv"
    path.write_text(format_line({"photo_id": 1, "user_tags": encode_tags(["Brown Bear", "#brownbear", "x"])})
                    + format_line({"photo_id": 2, "user_tags": encode_tags(["brown_bear"])}))
    result = count_tags(YfccReader(path), CANON, workers=1, progress=False)
    assert result.counts == {"brownbear": 2, "x": 1}
    assert result.keys_per_image == {2: 1, 1: 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_label_map_counts_images_carrying_any_alias(corpus, workers):
    label_of = {"brownbear": "bear", "grizzly": "bear", "river": "water", "lake": "water", "ab": "ab"}
    result = count_tags(YfccReader(corpus, block_size=8192), CANON, label_of=label_of, workers=workers,
                        progress=False)
    counts, per_image, _ = independent_count(corpus, label_of)
    assert result.counts == dict(counts) and set(counts) == {"bear", "water", "ab"}
    assert result.keys_per_image == dict(per_image)
    # Images with both aliases count once: fewer than the sum of the per-tag counts.
    plain = count_tags(YfccReader(corpus), CANON, workers=1, progress=False).counts
    assert result.counts["bear"] < plain["brownbear"] + plain["grizzly"]


def test_worker_cache_reset_keeps_counts_exact(corpus, monkeypatch):
    monkeypatch.setattr(array_canonicalizer, "_CACHE_LIMIT", 5)  # forked workers inherit it
    monkeypatch.setattr(tag_counts, "MERGE_ROWS", 10)  # and fold partials into the totals often
    result = count_tags(YfccReader(corpus, block_size=2048), CANON, workers=2, progress=False)
    assert result.counts == dict(independent_count(corpus)[0])


def test_bz2_input_counts_the_same(corpus, tmp_path):
    packed = tmp_path / "yfcc.tsv.bz2"
    packed.write_bytes(bz2.compress(corpus.read_bytes()))
    plain = count_tags(YfccReader(corpus), CANON, workers=1, progress=False)
    result = count_tags(YfccReader(packed, block_size=5000), CANON, workers=2, progress=False)
    assert result.counts == plain.counts and result.summary() == plain.summary()


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_text("")
    result = count_tags(YfccReader(path), CANON, workers=2, progress=False)
    assert result.counts == {} and result.images == 0 and result.rows == 0


class SpellingReader(TableReader):
    """A reader whose source writes 'q' for 'k', decoding its own way without saying how."""

    def decode_tag(self, raw: str) -> str:
        return raw.replace("q", "k")


def test_a_reader_that_decodes_its_own_way_is_counted_in_python(tmp_path):
    """The kernels know only PLAIN and URL_PLUS; any other decode_tag must reach every tag, the
    plain ASCII ones the kernels would otherwise take included."""
    path = tmp_path / "t.csv"
    path.write_text("key,tags\n1,qat;Kat;sea\n2,qat\n3,brown_bear\n")
    assert SpellingReader.tag_encoding is None and TableReader.tag_encoding == "plain"
    result = count_tags(SpellingReader(path, tags_delimiter=";"), CANON, workers=1, progress=False)
    assert result.counts == {"kat": 2, "sea": 1, "brownbear": 1}
