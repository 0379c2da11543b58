"""A vocabulary's label ids for every row of a record batch, through the columnar canonicaliser.

The shard builder labels a whole chunk of rows at once, the way the vocabulary counter counts one:
the chunk's raw tags are dictionary-encoded (:class:`~data.vocab.tag_arrays.TagOccurrences`), each
distinct raw tag is canonicalised once by :class:`~data.vocab.tag_arrays.ArrayCanonicalizer` (Arrow
kernels for plain ASCII, the reference canonicaliser for the rest) and looked up among the
vocabulary's tags and aliases, and numpy turns the (row, label) pairs into each row's sorted,
unique label ids. The result equals :meth:`data.vocab.vocabulary.Vocabulary.label_ids` on the
decoded tags, row by row (tests/data/vocab/test_row_labels.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.vocab.tag_arrays import ArrayCanonicalizer, TagOccurrences
from data.vocab.vocabulary import Vocabulary


class RowLabeller:
    """Callable: the tag occurrences of a batch -> a list<int32> column of label ids per row."""

    def __init__(self, vocab: Vocabulary, decode: Callable[[str], str], encoding: str | None) -> None:
        self.canonicalize = ArrayCanonicalizer(vocab.canonicalizer(), decode, encoding)
        index = vocab.index()
        self.names = pa.array(list(index), pa.string())
        self.ids = np.array(list(index.values()), dtype=np.int64)
        self.num_labels = max(len(vocab), 1)

    def __call__(self, tags: TagOccurrences) -> pa.ListArray:
        canonical = self.canonicalize(tags.distinct)
        position = pc.index_in(canonical, value_set=self.names).fill_null(-1).to_numpy(zero_copy_only=False)
        label_of_tag = np.where(position >= 0, self.ids[position], -1) if len(self.ids) else position
        label = label_of_tag[tags.tag] if len(tags.tag) else np.zeros(0, np.int64)
        kept = label >= 0
        # One (row, label) pair per row and label, sorted by row then label: a tag counts once.
        pairs = np.unique(tags.row[kept] * self.num_labels + label[kept])
        offsets = np.zeros(tags.rows + 1, dtype=np.int32)
        np.cumsum(np.bincount(pairs // self.num_labels, minlength=tags.rows), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array((pairs % self.num_labels).astype(np.int32)))
