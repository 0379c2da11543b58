"""Hashtag canonicalisation: one deterministic map from a decoded user tag to its canonical form.

The rules, in order (documented with examples in docs/tags.md):

1. Unicode NFKC (full-width letters and digits, ligatures and compatibility forms fold together).
2. ``str.casefold`` (stronger than ``lower``: 'Straße' and 'STRASSE' meet).
3. Strip surrounding whitespace and leading '#'.
4. Join multi-word forms by deleting word separators: whitespace, '+', '_', '-', '.', and
   apostrophes ('brown bear', 'brown+bear', 'brown_bear', 'Brown-Bear' -> 'brownbear').
5. Drop the tag (return ``None``) when it is empty, digit-only (years, counters), longer than
   ``max_length`` characters, still holds a control character (Unicode category Cc: C0, DEL, C1,
   e.g. from a percent-encoded ``%00`` or a JSON ``\u0007``; the whitespace controls were deleted by
   rule 4), or is on the stoplist of non-visual tags.

The stoplist is a text file: one canonical tag per line, ``re:<pattern>`` lines for regular
expressions matched against the canonical form (``re.fullmatch``), ``#`` comments. Its entries are
canonicalised when loaded, so the file may be written in any spelling.

A tag counts once per image: :meth:`TagCanonicalizer.canonical_set` de-duplicates after
canonicalisation, so 'Brown Bear' and '#brownbear' on one photo are one tag.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from data.errors import UserError

DEFAULT_STOPLIST = Path(__file__).with_name("stoplist.txt")
DEFAULT_MAX_LENGTH = 40

# Word separators deleted by rule 4. Apostrophes in their common Unicode forms are included so
# "denise's" and "denise’s" agree.
_SEPARATORS = re.compile(r"[\s+_\-.'’‘`]+")
# Unicode category Cc (C0 controls, DEL, C1 controls): a tag still holding one after rule 4 is dropped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def normalize(tag: str) -> str:
    """Rules 1-4: the canonical spelling of ``tag``, before the drop rules."""
    tag = unicodedata.normalize("NFKC", tag).casefold().strip().lstrip("#")
    return _SEPARATORS.sub("", tag)


@dataclass(frozen=True)
class Stoplist:
    """Exact canonical tags plus full-match regular expressions of non-visual tags."""

    words: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern, ...] = ()
    sha256: str = ""

    @classmethod
    def load(cls, path: str | Path | None) -> "Stoplist":
        """Read a stoplist file; ``None`` means no stoplist, a missing file is a user error."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise UserError(f"cannot read stoplist {path}: {err.strerror}; pass an existing file "
                            "or --stoplist none") from None
        words, patterns = set(), []
        for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("re:") else line.strip()
            if not line:
                continue
            if line.startswith("re:"):
                try:
                    patterns.append(re.compile(line[3:]))
                except re.error as err:
                    raise UserError(f"{path}:{lineno}: bad regular expression {line[3:]!r}: {err}") from None
            else:
                words.add(normalize(line))
        return cls(frozenset(words), tuple(patterns), hashlib.sha256(raw).hexdigest())

    def __contains__(self, canonical: str) -> bool:
        return canonical in self.words or any(p.fullmatch(canonical) for p in self.patterns)


@dataclass(frozen=True)
class TagCanonicalizer:
    """Callable mapping a decoded tag to its canonical form, or ``None`` when it is dropped."""

    stoplist: Stoplist = field(default_factory=Stoplist)
    max_length: int = DEFAULT_MAX_LENGTH

    @classmethod
    def from_files(cls, stoplist: str | Path | None = DEFAULT_STOPLIST,
                   max_length: int = DEFAULT_MAX_LENGTH) -> "TagCanonicalizer":
        return cls(Stoplist.load(stoplist), max_length)

    def __call__(self, tag: str) -> str | None:
        canonical = normalize(tag)
        if (not canonical or canonical.isdigit() or len(canonical) > self.max_length
                or _CONTROL.search(canonical) or canonical in self.stoplist):
            return None
        return canonical

    def canonical_set(self, tags: Iterable[str]) -> list[str]:
        """Canonical forms of an image's tags, each once, in first-seen order."""
        seen: dict[str, None] = {}
        for tag in tags:
            canonical = self(tag)
            if canonical is not None:
                seen.setdefault(canonical, None)
        return list(seen)

    def settings(self) -> dict:
        """What vocab.json records so later stages canonicalise the same way."""
        return {
            "rules": "nfkc,casefold,strip#,join[whitespace+_-.'],drop-empty,drop-digits,drop-long,drop-control,stoplist",
            "max_length": self.max_length,
            "stoplist_sha256": self.stoplist.sha256,
            "stoplist_size": len(self.stoplist.words) + len(self.stoplist.patterns),
        }
