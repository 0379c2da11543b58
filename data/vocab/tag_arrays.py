"""Canonicalisation of a whole Arrow array of raw tags at once, equal to :class:`TagCanonicalizer`.

Counting a corpus means canonicalising hundreds of thousands of distinct raw tags per million rows;
calling :class:`~data.vocab.tags.TagCanonicalizer` once per tag (a few microseconds each, most of it in the
stoplist's regular expressions) was the largest cost of the vocabulary counter. Almost every raw tag
is plain ASCII (YFCC100M URL-encodes everything else), and on plain ASCII every rule of
docs/tags.md is an Arrow compute kernel:

* decoding: '+' -> ' ' for URL-encoded sources (tags without '%'), nothing for plain sources;
* NFKC is the identity and ``casefold`` is ``lower`` on ASCII;
* strip whitespace, then leading '#', then delete the separators ``[ +_.'-]``;
* drop empty, digit-only, over-long and stoplisted results, the stoplist's expressions being run
  by RE2 as one anchored alternation.

So :class:`ArrayCanonicalizer` runs those kernels over the tags made only of ``[A-Za-z0-9 +_.'#-]``
and sends every other tag (percent escapes, control characters, non-ASCII, other punctuation) through the reference
canonicaliser with a cache. The expressions go to RE2 only when each is built from a conservative
subset of syntax that RE2 and Python's ``re`` read the same way (literals, classes of plain
characters, groups, alternation, quantifiers with explicit bounds, anchors, ``.`` and ``\\d``);
canonical ASCII tags contain only ``[a-z0-9#]``, where the two engines' character semantics agree.
Otherwise the kernels stop before the expressions and those run in Python. tests/data/vocab/test_tag_arrays.py
checks the result against :class:`TagCanonicalizer` tag by tag.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.corpus.record import URL_PLUS
from data.vocab.tags import TagCanonicalizer

# Tags the kernels handle: plain ASCII letters, digits and the characters the rules act on.
_FAST = r"^[A-Za-z0-9 +_.'#-]*$"
_SEPARATORS = r"[ +_.'-]"
_DIGITS = r"^[0-9]+$"
# One token of the regular-expression syntax that RE2 and Python agree on (see the docstring).
_SAFE_TOKEN = re.compile(r"""
      [A-Za-z0-9:=/#@&!%~,;_ ]
    | \\[^A-Za-z0-9] | \\d
    | \[\^?(?:[A-Za-z0-9:=/#@&!%~,;_ .+*?()|$-]|\\[^A-Za-z0-9]|\\d)+\]
    | \(\?: | [()|.^$]
    | [*+?]\?? | \{[0-9]+(?:,[0-9]*)?\}\??
""", re.VERBOSE)
_CACHE_LIMIT = 1_000_000


def re2_safe(pattern: str) -> bool:
    """Is ``pattern`` made only of syntax that RE2 and Python's ``re`` read identically?"""
    position = 0
    while position < len(pattern):
        token = _SAFE_TOKEN.match(pattern, position)
        if token is None:
            return False
        position = token.end()
    return True


@dataclass(frozen=True)
class TagOccurrences:
    """A list column of raw tags, dictionary-encoded: its distinct tags, and for every occurrence
    the row it is on and the index of its tag among the distinct ones. Whatever is done per tag
    (decoding, canonicalising, looking up a label) is then done once per distinct tag."""

    distinct: pa.StringArray
    row: np.ndarray   # int64, per occurrence
    tag: np.ndarray   # int32/int64 index into ``distinct``, per occurrence
    rows: int         # rows of the column

    @classmethod
    def of(cls, tags: pa.ListArray) -> "TagOccurrences":
        raw = pc.dictionary_encode(pc.list_flatten(tags))
        row = pc.list_parent_indices(tags).to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(raw.dictionary, row, raw.indices.to_numpy(zero_copy_only=False), len(tags))


class ArrayCanonicalizer:
    """Callable: Arrow string array of raw tags -> their canonical forms (null when dropped)."""

    def __init__(self, canonicalizer: TagCanonicalizer, decode: Callable[[str], str],
                 encoding: str | None) -> None:
        self.scalar = canonicalizer
        self.decode = decode
        self.encoding = encoding  # a reader's tag_encoding: PLAIN, URL_PLUS, or None (every tag in Python)
        stoplist = canonicalizer.stoplist
        self.stop_words = pa.array(sorted(stoplist.words), pa.string())
        patterns = [p.pattern for p in stoplist.patterns]
        self.stop_regex = None
        self.regex_in_python = False
        if patterns and all(p.flags == re.UNICODE and re2_safe(p.pattern) for p in stoplist.patterns):
            self.stop_regex = "^(?:" + "|".join(f"(?:{p})" for p in patterns) + ")$"
            try:
                pc.match_substring_regex(pa.array([""]), self.stop_regex)
            except pa.ArrowInvalid:
                self.stop_regex = None
        self.regex_in_python = bool(patterns) and self.stop_regex is None
        self.cache: dict[str, str | None] = {}

    def __call__(self, raw: pa.StringArray) -> pa.StringArray:
        if self.encoding is None or self.regex_in_python:
            return pa.array(self._in_python(raw.to_pylist()), pa.string())
        fast = pc.fill_null(pc.match_substring_regex(raw, _FAST), False)
        fast = fast.to_numpy(zero_copy_only=False)
        canonical = self._kernels(raw)
        slow = np.flatnonzero(~fast)
        if len(slow) == 0:
            return canonical
        values = self._in_python(raw.take(pa.array(slow)).to_pylist())
        return pc.replace_with_mask(canonical, pa.array(~fast), pa.array(values, pa.string()))

    def _kernels(self, raw: pa.StringArray) -> pa.StringArray:
        """The rules on tags of the fast alphabet (other tags get meaningless values)."""
        text = pc.replace_substring(raw, "+", " ") if self.encoding == URL_PLUS else raw
        text = pc.utf8_trim_whitespace(pc.ascii_lower(text))
        text = pc.replace_substring_regex(pc.utf8_ltrim(text, characters="#"), _SEPARATORS, "")
        drop = pc.or_(pc.equal(pc.binary_length(text), 0),
                      pc.greater(pc.binary_length(text), self.scalar.max_length))
        drop = pc.or_(drop, pc.match_substring_regex(text, _DIGITS))
        if len(self.stop_words):
            drop = pc.or_(drop, pc.is_in(text, value_set=self.stop_words))
        if self.stop_regex is not None:
            drop = pc.or_(drop, pc.match_substring_regex(text, self.stop_regex))
        return pc.if_else(drop, pa.scalar(None, pa.string()), text)

    def _in_python(self, raws: list[str]) -> list[str | None]:
        cache = self.cache
        if len(cache) + len(raws) > _CACHE_LIMIT:
            cache.clear()
        out = []
        for raw in raws:
            if raw is None:
                out.append(None)
            elif raw in cache:
                out.append(cache[raw])
            else:
                out.append(cache.setdefault(raw, self.scalar(self.decode(raw))))
        return out
