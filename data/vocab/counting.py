"""Exact per-tag image counts over a whole corpus, in parallel, in memory that grows with the number
of distinct tags rather than rows.

The corpus reader cuts its input into chunks; worker processes parse one chunk each (columnar, see
``CorpusReader.read_chunk``) and return a *partial count*: the distinct counted keys of the chunk
with the number of its images carrying each. The parent merges partials as they come, in corpus
order. Per chunk a worker

1. dictionary-encodes the chunk's raw tags, so that everything after runs once per distinct raw
   tag rather than per occurrence;
2. canonicalises the distinct raw tags as one Arrow array (:mod:`data.vocab.tag_arrays`: compute
   kernels for plain ASCII tags, the reference :class:`~data.vocab.tags.TagCanonicalizer` with a cache for
   the rest) and, with ``label_of``, maps canonical tags to label keys;
3. dictionary-encodes the keys, so that each occurrence gets the id of its key in the chunk, and
   removes duplicate (image, key) pairs with numpy: that is what makes a key count once per image
   even when several raw spellings canonicalise to it; a bincount of the survivors is the
   partial count.

Memory: the parent keeps the running counts as an Arrow table (a key string and an int64 per
distinct key) and folds partials into it with a hash aggregation once they add up to as many rows
as it holds; only the final result is a Python ``dict``. A worker holds one chunk and a bounded
cache of the tags canonicalised in Python.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from data.corpus.record import CorpusReader, MalformedReport, RecordBatch
from data.vocab.tag_arrays import ArrayCanonicalizer, TagOccurrences
from data.vocab.tags import TagCanonicalizer
from data.worker_pool import ordered_map, start_pool

# Chunks handed out ahead of the one being merged, per worker: enough to keep workers busy,
# few enough that the input is never all in memory at once.
AHEAD_PER_WORKER = 2
# Partial rows the parent collects before folding them into the running counts: at least this
# many, and at least as many as the totals hold (so folding costs O(1) per partial row overall).
MERGE_ROWS = 1 << 18


@dataclass
class TagCounts:
    """The result of one counting pass (see :func:`count_tags`)."""

    counts: dict[str, int]            # canonical tag (or label key with label_of) -> images carrying it
    images: int = 0                   # well-formed records counted
    images_with_tags: int = 0         # records with >= 1 counted key
    keys_per_image: dict[int, int] = field(default_factory=dict)  # distinct keys on an image -> images
    rows: int = 0                     # physical rows read, malformed and skipped included
    skipped: dict[str, int] = field(default_factory=dict)  # reader-level skips by reason
    malformed: MalformedReport = field(default_factory=MalformedReport)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready corpus statistics (everything but the per-key counts)."""
        return {
            "rows": self.rows, "images": self.images, "images_with_tags": self.images_with_tags,
            "distinct_keys": len(self.counts),
            "keys_per_image": {str(k): v for k, v in sorted(self.keys_per_image.items())},
            "skipped": dict(sorted(self.skipped.items())), "malformed": self.malformed.to_dict(),
        }


@dataclass
class _Partial:
    """What a worker sends back for one chunk."""

    keys: pa.StringArray              # the keys present in the chunk
    counts: np.ndarray                # images of the chunk carrying each
    images: int
    keys_per_image: np.ndarray        # histogram indexed by number of keys on an image
    skipped: dict[str, int]
    malformed: list[tuple[int, str]]

    @property
    def rows(self) -> int:
        return self.images + len(self.malformed) + sum(self.skipped.values())


class _ChunkCounter:
    """Counts one chunk at a time; lives in a worker process and keeps its cache across chunks."""

    def __init__(self, reader: CorpusReader, canonicalizer: TagCanonicalizer,
                 label_of: Mapping[str, str] | None) -> None:
        self.reader = reader
        self.canonicalize = ArrayCanonicalizer(canonicalizer, reader.decode_tag, reader.tag_encoding)
        if label_of is not None:
            self.label_tags = pa.array(list(label_of), pa.string())
            self.label_keys = pa.array(list(label_of.values()), pa.string())
        self.label_of = label_of

    def __call__(self, chunk: Any) -> _Partial:
        batch = self.reader.read_chunk(chunk, tags_only=True)
        images = len(batch)
        keys, image_of, key = self._occurrences(batch)
        # One (image, key) pair per image and key: the once-per-image rule.
        stride = max(len(keys), 1)
        pairs = np.sort(image_of * stride + key)
        if len(pairs):
            pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        per_image = np.bincount(pairs // stride, minlength=images)
        return _Partial(keys=keys, counts=np.bincount(pairs % stride, minlength=len(keys)), images=images,
                        keys_per_image=np.bincount(per_image),
                        skipped=dict(batch.skipped), malformed=list(batch.malformed))

    def _occurrences(self, batch: RecordBatch) -> tuple[pa.StringArray, np.ndarray, np.ndarray]:
        """The chunk's distinct keys, and for every raw tag occurrence that maps to one, its image
        and the key's index."""
        tags = TagOccurrences.of(batch.tags)
        keys = pc.dictionary_encode(self._keys_of(tags.distinct))
        key_of_raw = keys.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        key = key_of_raw[tags.tag]
        counted = key >= 0
        return keys.dictionary, tags.row[counted], key[counted]

    def _keys_of(self, raw: pa.StringArray) -> pa.StringArray:
        """Per distinct raw tag: its counted key (canonical form, or label), null if none."""
        canonical = self.canonicalize(raw)
        if self.label_of is None:
            return canonical
        return self.label_keys.take(pc.index_in(canonical, value_set=self.label_tags))


_WORKER: _ChunkCounter | None = None


def _init_worker(counter: _ChunkCounter) -> None:
    global _WORKER
    _WORKER = counter


def _count_in_worker(chunk: Any) -> _Partial:
    return _WORKER(chunk)


def count_tags(reader: CorpusReader, canonicalizer: TagCanonicalizer,
               label_of: Mapping[str, str] | None = None, workers: int = 0,
               progress: bool = True) -> TagCounts:
    """Count, for every canonical tag (or every label of ``label_of``), the images carrying it.

    Exact: each image counts once per key however many of its raw tags map to that key.
    ``workers=0`` uses every CPU; ``workers=1`` counts in this process.
    """
    workers = workers or os.cpu_count() or 1
    counter = _ChunkCounter(reader, canonicalizer, label_of)
    merger = _Merger()
    with tqdm(unit=" rows", unit_scale=True, desc="counting tags", disable=not progress,
              mininterval=0.5) as bar:
        if workers == 1:
            merger.add_all(map(counter, reader.chunks()), bar)
        else:
            with start_pool(workers, _init_worker, (counter,)) as pool:
                merger.add_all(ordered_map(pool, _count_in_worker, reader.chunks(), AHEAD_PER_WORKER * workers),
                               bar)
    return merger.result()


class _Merger:
    """Adds partial counts into the running ones."""

    def __init__(self) -> None:
        self.totals = pa.table({"key": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.histogram = np.zeros(1, dtype=np.int64)
        self.stats = TagCounts(counts={})

    def add_all(self, partials: Iterable[_Partial], bar: tqdm) -> None:
        for part in partials:
            self.add(part)
            bar.update(part.rows)

    def add(self, part: _Partial) -> None:
        self.pending.append(pa.table({"key": part.keys, "count": pa.array(part.counts, pa.int64())}))
        self.pending_rows += len(part.keys)
        if self.pending_rows >= max(MERGE_ROWS, self.totals.num_rows):
            self._fold()
        if len(part.keys_per_image) > len(self.histogram):
            self.histogram = np.pad(self.histogram, (0, len(part.keys_per_image) - len(self.histogram)))
        self.histogram[:len(part.keys_per_image)] += part.keys_per_image
        stats = self.stats
        stats.images += part.images
        stats.rows += part.rows
        for reason, n in part.skipped.items():
            stats.skipped[reason] = stats.skipped.get(reason, 0) + n
        stats.malformed.extend(part.malformed)

    def _fold(self) -> None:
        """Sum the pending partials into the totals (a hash aggregation in Arrow)."""
        merged = pa.concat_tables([self.totals, *self.pending]).group_by("key").aggregate([("count", "sum")])
        self.totals = pa.table({"key": merged.column("key"), "count": merged.column("count_sum")})
        self.pending, self.pending_rows = [], 0

    def result(self) -> TagCounts:
        self._fold()
        stats = self.stats
        stats.counts = dict(zip(self.totals.column("key").to_pylist(), self.totals.column("count").to_pylist()))
        self.totals = None
        stats.keys_per_image = {k: v for k, v in enumerate(self.histogram.tolist()) if v}
        stats.images_with_tags = stats.images - stats.keys_per_image.get(0, 0)
        return stats
