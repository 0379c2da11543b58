"""The hashtag vocabulary: vocab.json, the contract between the vocabulary and shard stages.

vocab.json holds a format version, the canonicalisation settings, the corpus it was counted on,
the selection settings, and one entry per label: dense ``id`` (0..K-1 by descending count),
canonical ``tag``, ``count`` (images carrying it), merged ``aliases`` and an optional WordNet
``synset``. Any canonical form of the tag or of one of its aliases maps to the label.

:func:`data.vocab.build.build_vocabulary` makes one from a corpus (docs/vocabulary.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from data.atomic_write import write_json
from data.errors import UserError
from data.untrusted_json import InvalidJSON, parse_json
from data.vocab.tags import DEFAULT_MAX_LENGTH, Stoplist, TagCanonicalizer, normalize

FORMAT_VERSION = 1


@dataclass
class Label:
    id: int
    tag: str
    count: int
    aliases: list[str] = field(default_factory=list)
    synset: str | None = None


@dataclass
class Vocabulary:
    labels: list[Label]
    canonicalization: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def tags(self) -> list[str]:
        return [label.tag for label in self.labels]

    def index(self) -> dict[str, int]:
        """Canonical tag or alias -> label id. An alias claimed by two labels keeps the first
        (the more frequent, since ids are ordered by count)."""
        if self._index is None:
            index: dict[str, int] = {}
            for label in self.labels:
                for name in (label.tag, *label.aliases):
                    index.setdefault(normalize(name), label.id)
            self._index = index
        return self._index

    def canonicalizer(self) -> TagCanonicalizer:
        """A canonicaliser with the recorded length limit. The stoplist is not needed to map tags
        to labels (stoplisted tags are never labels), so it is left empty."""
        return TagCanonicalizer(Stoplist(), self.canonicalization.get("max_length", DEFAULT_MAX_LENGTH))

    def label_ids(self, tags: Iterable[str], canonicalizer: TagCanonicalizer | None = None) -> list[int]:
        """Sorted, unique label ids of an image's decoded tags (a tag counts once per image)."""
        canonicalizer = canonicalizer or self.canonicalizer()
        index = self.index()
        return sorted({index[c] for c in canonicalizer.canonical_set(tags) if c in index})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "openwsl-vocab",
            "version": FORMAT_VERSION,
            "num_labels": len(self.labels),
            "canonicalization": self.canonicalization,
            "corpus": self.corpus,
            "selection": self.selection,
            "labels": [asdict(label) for label in self.labels],
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            obj = parse_json(path.read_bytes())
        except FileNotFoundError:
            raise UserError(f"vocabulary {path} not found; build one with scripts/build_vocab.py") from None
        except (OSError, InvalidJSON) as err:
            raise UserError(f"cannot read vocabulary {path}: {err}") from None
        return cls.from_dict(obj, str(path))

    @classmethod
    def from_dict(cls, obj: Any, where: str = "vocabulary") -> "Vocabulary":
        if not isinstance(obj, dict) or obj.get("format") != "openwsl-vocab":
            raise UserError(f"{where} is not an openwsl vocab.json (no \"format\": \"openwsl-vocab\")")
        if obj.get("version") != FORMAT_VERSION:
            raise UserError(f"{where} has vocab format version {obj.get('version')!r}; this code reads "
                            f"version {FORMAT_VERSION}: rebuild it with scripts/build_vocab.py")
        try:
            labels = [Label(**entry) for entry in obj["labels"]]
        except (KeyError, TypeError) as err:
            raise UserError(f"{where}: malformed label entry ({err})") from None
        for position, label in enumerate(labels):
            if label.id != position:
                raise UserError(f"{where}: label ids must be dense 0..K-1 in order; entry {position} "
                                f"has id {label.id}")
        return cls(labels, obj.get("canonicalization", {}), obj.get("corpus", {}), obj.get("selection", {}))
