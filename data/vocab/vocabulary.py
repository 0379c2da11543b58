"""The hashtag vocabulary: vocab.json, the contract between the vocabulary and shard stages.

vocab.json holds a format version, the canonicalisation settings, the corpus it was counted on,
the selection settings, and one entry per label: dense ``id`` (0..K-1 by descending count),
canonical ``tag``, ``count`` (images carrying it), merged ``aliases`` and an optional WordNet
``synset``. Any canonical form of the tag or of one of its aliases maps to the label.

:func:`build_vocabulary` makes one from a corpus (docs/vocabulary.md): count every canonical tag
(or, aligned to WordNet, every synset) exactly over the corpus with :func:`data.vocab.counting.count_tags`,
keep those carried by at least ``min_count`` images, the ``top_k`` most frequent, then count again
with the final labels for the report (coverage, labels per image).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from data.atomic_write import write_json
from data.errors import UserError
from data.vocab.tags import DEFAULT_MAX_LENGTH, Stoplist, TagCanonicalizer, normalize

if TYPE_CHECKING:
    from data.corpus.record import CorpusReader
    from data.vocab.synsets import SynsetAliases
    from data.vocab.counting import TagCounts
    from data.vocab.report import VocabReport

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
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"vocabulary {path} not found; build one with scripts/build_vocab.py") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
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


# -- building a vocabulary from a corpus ------------------------------------------------------------

def select_labels(counts: dict[str, int], *, top_k: int | None = None, min_count: int = 1) -> list[tuple[str, int]]:
    """Keys with ``count >= min_count``, the ``top_k`` most frequent, by descending count; ties
    are broken by the key string so that the result does not depend on counting order."""
    kept = [(key, n) for key, n in counts.items() if n >= min_count]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return kept if top_k is None else kept[:top_k]


def build_vocabulary(reader: CorpusReader, canonicalizer: TagCanonicalizer, *, top_k: int | None = None,
                     min_count: int = 1, align: str | None = None, workers: int = 0,
                     progress: bool = True) -> tuple[Vocabulary, VocabReport]:
    """Count the corpus, select labels, and recount it with the final labels for the report.

    Without ``align`` a label is one canonical tag. With ``align`` ("imagenet-1k",
    "imagenet-21k") a label is a WordNet synset counted over every hashtag aligned to it
    (data/synsets.py): an image carrying two of its hashtags counts once.
    """
    # Imported here: training processes import this module for Vocabulary alone, and need neither
    # the counting machinery (Arrow compute, worker pools) nor the report's plotting.
    from data.vocab.synsets import synset_alias_map
    from data.vocab.counting import count_tags
    from data.vocab.report import VocabReport

    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1, got {min_count}")
    aliases = synset_alias_map(align, canonicalizer) if align is not None else None
    first = count_tags(reader, canonicalizer, aliases.label_of if aliases else None, workers, progress)
    _check_not_empty(reader, first, aliases)
    selected = select_labels(first.counts, top_k=top_k, min_count=min_count)
    if not selected:
        raise UserError(f"no {'synset' if aliases else 'tag'} is carried by --min-count {min_count} images "
                        f"(the most frequent has {max(first.counts.values())}); lower --min-count")
    names = {key: _label_names(key, aliases) for key, _ in selected}
    # Pass 2: exact counts of the final labels, coverage and labels per image.
    final = count_tags(reader, canonicalizer, {name: key for key, tags in names.items() for name in tags},
                       workers, progress)
    ranked = select_labels({key: final.counts.get(key, 0) for key, _ in selected})
    labels = [Label(id=i, tag=names[key][0], count=n, aliases=names[key][1:],
                    synset=key if aliases else None) for i, (key, n) in enumerate(ranked)]
    vocab = Vocabulary(
        labels, canonicalizer.settings(),
        corpus={**reader.describe(), "rows": first.rows, "images": first.images,
                "images_with_tags": first.images_with_tags, "malformed": first.malformed.total,
                "skipped": dict(sorted(first.skipped.items()))},
        selection={"top_k": top_k, "min_count": min_count, "align": align})
    return vocab, VocabReport(vocab=vocab, candidates=first, final=final, alignment=aliases)


def _label_names(key: str, aliases: SynsetAliases | None) -> list[str]:
    """A label's canonical tag followed by its aliases."""
    if aliases is None:
        return [key]
    primary, others = aliases.labels[key]
    return [primary, *others]


def _check_not_empty(reader: CorpusReader, counts: TagCounts, aliases: SynsetAliases | None) -> None:
    where = reader.describe().get("input", reader.source)
    if counts.images == 0:
        problems = ", ".join(f"{n} {reason}" for reason, n in
                             sorted({**counts.malformed.counts, **counts.skipped}.items())) or "no rows at all"
        raise UserError(f"empty corpus: {where} has no usable rows ({counts.rows} read: {problems}); "
                        "check --input, --source and the reader options")
    if not counts.counts:
        what = (f"no tag matches a synset of {aliases.family}" if aliases
                else "no tag survives canonicalisation (all empty, digit-only, too long or stoplisted)")
        raise UserError(f"empty corpus: {where}: {counts.images} images but {what}; check --tags-field, "
                        "--stoplist and --max-tag-length")
