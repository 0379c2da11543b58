"""The columnar row labeller (data/vocab/row_labels.py) gives every row the label ids of the reference
path, ``Vocabulary.label_ids`` on the decoded tags, for the encodings the readers declare."""
from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa

from data.corpus.table import TableReader
from data.corpus.yfcc import YfccReader
from data.vocab.row_labels import RowLabeller
from data.vocab.tag_arrays import TagOccurrences
from data.vocab.tags import TagCanonicalizer
from data.vocab.vocabulary import Label, Vocabulary


def labels_of(vocab: Vocabulary, reader, tags: pa.ListArray) -> list[list[int]]:
    return RowLabeller(vocab, reader.decode_tag, reader.tag_encoding)(TagOccurrences.of(tags)).to_pylist()


def reference(vocab: Vocabulary, reader, tags: pa.ListArray) -> list[list[int]]:
    return [vocab.label_ids(reader.decode_tag(t) for t in (row or ())) for row in tags.to_pylist()]


def test_real_yfcc_rows_get_the_reference_labels(shared_data):
    reader = YfccReader(shared_data / "yfcc100m_sample" / "yfcc100m_dataset-head2000.unique.tsv")
    (chunk,) = list(reader.chunks())
    batch = reader.read_chunk(chunk, tags_only=True)
    canon = TagCanonicalizer()
    counts = Counter(c for row in batch.tags.to_pylist() for c in canon.canonical_set(map(reader.decode_tag, row)))
    common = [tag for tag, _ in counts.most_common(300)]
    # Labels with aliases in other spellings; a tag that is an alias of one label and the name of another.
    labels = [Label(i, tag, 300 - i, aliases=[tag.upper(), f"#{tag}s"] if i % 3 == 0 else []) for i, tag in
              enumerate(common)]
    labels[1].aliases.append(common[0])
    vocab = Vocabulary(labels, canonicalization=canon.settings())
    got = labels_of(vocab, reader, batch.tags)
    assert got == reference(vocab, reader, batch.tags)
    assert sum(map(bool, got)) > 500 and sum(not row for row in got) > 500  # both kinds of row are there


def test_plain_tags_with_every_kind_of_spelling_get_the_reference_labels(tmp_path):
    (tmp_path / "t.csv").write_text("key,tags\n1,x\n")
    reader = TableReader(tmp_path / "t.csv")
    words = ["cat", "brown bear", "straße", "猫", "new-york", "rock'n'roll", "1984", "a" * 41]
    spellings = lambda w: [w, w.upper(), f"#{w}", w.replace(" ", "_"), f" {w} ", w.replace(" ", "+")]
    vocab = Vocabulary([Label(i, w, 10, aliases=["kitty"] if w == "cat" else []) for i, w in enumerate(words)])
    rng = random.Random(0)
    pool = [s for w in words for s in spellings(w)] + ["kitty", "KITTY", "dog", "", "#", "strasse", "ＣＡＴ"]
    rows = [[rng.choice(pool) for _ in range(rng.randint(0, 6))] for _ in range(3000)] + [[], ["cat", "Cat", "#cat"]]
    tags = pa.array(rows, pa.list_(pa.string()))
    assert labels_of(vocab, reader, tags) == reference(vocab, reader, tags)
    assert labels_of(vocab, reader, tags)[-1] == [0]
    sliced = tags.slice(1000, 500)  # a slice of a column (non-zero offset) labels the same
    assert labels_of(vocab, reader, sliced) == reference(vocab, reader, sliced)
