"""Building a vocabulary from a corpus (docs/vocabulary.md).

Count every canonical tag (or, aligned to WordNet, every synset) exactly over the corpus with
:func:`data.vocab.counting.count_tags`, keep those carried by at least ``min_count`` images, the
``top_k`` most frequent (:func:`select_labels`), then count again with the final labels for the
report (coverage, labels per image). The result is a :class:`~data.vocab.vocabulary.Vocabulary`
(the vocab.json format) and a :class:`~data.vocab.report.VocabReport`.
"""
from __future__ import annotations

from data.corpus.record import CorpusReader
from data.errors import UserError
from data.vocab.counting import TagCounts, count_tags
from data.vocab.report import VocabReport
from data.vocab.synsets import SynsetAliases, synset_alias_map
from data.vocab.tags import TagCanonicalizer
from data.vocab.vocabulary import Label, Vocabulary


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
    (data/vocab/synsets.py): an image carrying two of its hashtags counts once.
    """
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
