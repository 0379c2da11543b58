"""Control characters inside tags (percent-encoded ``%00``/``%07``/``%7F``/``%C2%85`` in YFCC100M, ``\\u0000``
escapes in JSON) never become, or match, a vocabulary label: a tag that still holds a control character
after canonicalisation is dropped (docs/tags.md, rule 7), in the counter (scripts/build_vocab.py) and in
the shard builder's columnar labeller alike. Whitespace controls (tab, newline, ...) are word separators."""
from __future__ import annotations

import json
import re
import sys
import unicodedata

import pyarrow as pa

from data.corpus.yfcc import YfccReader, encode_tags, format_line
from data.vocab.row_labels import RowLabeller
from data.vocab.tag_arrays import TagOccurrences
from data.vocab.tags import TagCanonicalizer
from data.vocab.vocabulary import Label, Vocabulary
from tests.faults.child_process import REPO, run

CONTROLS = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]
SEPARATING = [c for c in CONTROLS if re.fullmatch(r"\s", c)]  # tab, newline, ..., NEL: joined like spaces


def _rows() -> list[list[str]]:
    return [["bear", f"wolf{c}pack", f"{c}", f"{c}moose"] for c in CONTROLS]


def _has_control(tag: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in tag)


def _labels(source: str, corpus, *extra: str) -> dict[str, int]:
    out = corpus.with_name("vocab.json")
    done = run([sys.executable, str(REPO / "scripts" / "build_vocab.py"), "--source", source, "--input", str(corpus),
                "--out", str(out), "--workers", "2", "--no-progress", "--stoplist", "none", "--min-count", "1",
                *extra], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {label["tag"]: label["count"] for label in json.loads(out.read_text())["labels"]}


def _assert_clean(labels: dict[str, int]) -> None:
    assert [tag for tag in labels if _has_control(tag)] == []
    # what is left: 'bear' on every row, and the tags whose control character was a word separator
    assert labels == {"bear": len(CONTROLS), "wolfpack": len(SEPARATING), "moose": len(SEPARATING)}


def test_yfcc_percent_encoded_controls_make_no_label(tmp_path):
    corpus = tmp_path / "yfcc100m_dataset"
    corpus.write_text("".join(format_line({"photo_id": i, "user_tags": encode_tags(tags), "title": "a+photo"})
                              for i, tags in enumerate(_rows())), encoding="utf-8")
    assert "%00" in corpus.read_text() and "%7F" in corpus.read_text() and "%C2%85" in corpus.read_text()
    _assert_clean(_labels("yfcc100m", corpus))


def test_jsonl_unicode_escaped_controls_make_no_label(tmp_path):
    corpus = tmp_path / "photos.jsonl"
    corpus.write_text("".join(json.dumps({"key": str(i), "tags": tags}) + "\n" for i, tags in enumerate(_rows())))
    assert "\\u0000" in corpus.read_text() and "\x00" not in corpus.read_text()
    _assert_clean(_labels("jsonl", corpus))


def test_shard_row_labeller_matches_no_control_label(tmp_path):
    """A vocabulary that does hold such labels (one built before this rule) labels no row with them."""
    corpus = tmp_path / "yfcc100m_dataset"
    corpus.write_text("".join(format_line({"photo_id": i, "user_tags": encode_tags(tags), "title": "a+photo"})
                              for i, tags in enumerate(_rows())), encoding="utf-8")
    reader = YfccReader(corpus)
    (chunk,) = list(reader.chunks())
    tags = reader.read_chunk(chunk, tags_only=True).tags
    dirty = [f"wolf{c}pack" for c in CONTROLS if c not in SEPARATING]
    labels = [Label(0, "bear", 1)] + [Label(i + 1, tag, 1) for i, tag in enumerate(dirty)]
    vocab = Vocabulary(labels, canonicalization=TagCanonicalizer().settings())
    got = RowLabeller(vocab, reader.decode_tag, reader.tag_encoding)(TagOccurrences.of(tags)).to_pylist()
    assert got == [[0]] * len(CONTROLS)
    reference = [vocab.label_ids(map(reader.decode_tag, row)) for row in tags.to_pylist()]
    assert reference == got
