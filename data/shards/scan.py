"""The scan phase of the shard builder: one chunk of the corpus in, one manifest part out.

Every row of the corpus is scanned by exactly one worker of one node: node ``r`` of ``n`` takes the
chunks ``i`` with ``i % n == r`` (byte ranges of a metadata file, row groups, img2dataset tars: the
reader's own chunks). Per chunk a worker

- labels every row at once through the columnar canonicaliser (:mod:`data.vocab.row_labels`, the
  path the vocabulary counter takes); a row without a label is counted as ``no_label`` and goes no
  further;
- for each labelled row: its tar-safe sample key (:func:`tar_safe_key`), its split
  (:func:`split_of`), its image source (:class:`~data.images.sources.ImageResolver`), and the
  blake2b-128 of the image bytes, read once (rows of the chunk that name the same source share
  one read), or why there is none (``missing_image``, ``too_large``);
- writes the labelled rows, in corpus order, as ``part-NNNNNN.parquet`` (atomically) in the scan
  directory. Its Parquet metadata holds the chunk's record count, its ``no_label`` count and
  first keys, and the image bytes the scan read.

A part is what the serial plan (:mod:`data.shards.plan`) reads, and only its fixed-width columns
(:data:`PLAN_COLUMNS`: 16-byte key and image digests, a status byte, the split); the build phase
(:mod:`data.shards.unit`) reads back, for the rows of one unit, what goes into the samples
(:func:`read_candidates`). A part depends only on its chunk and on the scan settings, which the
scan directory's name carries (``scan-<digest>``), so a part found there is kept by a rerun.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.atomic_write import atomic_open
from data.corpus.record import CorpusReader, Record, RecordBatch
from data.images.decode import ImageSkip
from data.images.sources import (MAX_IMAGE_BYTES, FileImage, ImageResolver, ImageSource, InlineImage,
                                 MissingImage, read_image)
from data.skip_report import SkipReport
from data.tar_member import TarMember
from data.vocab.row_labels import RowLabeller
from data.vocab.tag_arrays import TagOccurrences
from data.vocab.vocabulary import Vocabulary

SCAN_FORMAT = 1
PART_META_KEY = b"openwsl-scan"
#: rows per Parquet row group: the build phase reads a unit's rows group by group
ROW_GROUP_ROWS = 4096
#: image status codes of a labelled row, and the skip reason of each but the first
IMAGE_OK, IMAGE_MISSING, IMAGE_TOO_LARGE = 0, 1, 2
IMAGE_SKIPS = {IMAGE_MISSING: "missing_image", IMAGE_TOO_LARGE: "too_large"}
#: the columns the plan reads
PLAN_COLUMNS = ("key_hash", "image", "digest", "val", "detail")
# Metadata copied into each sample's json when present: where the image came from and its licence.
PROVENANCE_FIELDS = ("photo_id", "id", "download_url", "page_url", "url", "license", "license_name",
                     "license_url", "user_nsid")
# Metadata the image resolver looks at.
_RESOLVER_FIELDS = ("download_url", "url", "hash")
_SOURCE_FILE, _SOURCE_MEMBER, _SOURCE_INLINE = 1, 2, 3
_NO_DIGEST = bytes(16)
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,80}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def tar_safe_key(key: str) -> str:
    """A tar member stem for ``key``: no '/', no '.', (webdataset splits the extension at the first
    dot), at most 93 characters. Safe keys are kept; others are cleaned and suffixed with a hash of
    the original so they stay stable and unique."""
    if _SAFE_KEY.fullmatch(key):
        return key
    cleaned = _UNSAFE.sub("_", key).strip("_")[:80]
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=6).hexdigest()
    return f"{cleaned}-{digest}" if cleaned else digest


def split_of(key: str, val_fraction: float) -> str:
    """``val`` for a stable pseudo-random ``val_fraction`` of keys, else ``train``."""
    value = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    return "val" if value < val_fraction * 2**64 else "train"


@dataclass(frozen=True)
class Candidate:
    """A record chosen for a shard, as the worker needs it."""

    key: str
    source_key: str
    labels: tuple[int, ...]
    tags: tuple[str, ...]
    image: ImageSource
    provenance: tuple[tuple[str, Any], ...] = ()


def _json_scalar(value: Any) -> bool:
    # NaN and infinities are not JSON; empty strings say nothing.
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) or (isinstance(value, str) and value != "")


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


@dataclass
class PartSummary:
    """What scanning one chunk found (also read back from a part written by an earlier run)."""

    index: int
    records: int
    labelled: int
    no_label: SkipReport
    image_bytes: int = 0  # image bytes the scan read (each image source of the chunk once)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SCAN_FORMAT, "chunk": self.index, "records": self.records,
                "labelled": self.labelled, "no_label": self.no_label.to_dict(), "image_bytes": self.image_bytes}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "PartSummary":
        return cls(obj["chunk"], obj["records"], obj["labelled"], SkipReport.from_dict(obj["no_label"]),
                   obj.get("image_bytes", 0))


def read_summary(path: Path) -> PartSummary:
    """The summary a part carries in its Parquet metadata."""
    return PartSummary.from_dict(json.loads(pq.read_schema(path).metadata[PART_META_KEY]))


class Scanner:
    """Scans chunks into parts. Built in the parent, then lives in each worker process (with fork
    it is inherited, with spawn pickled), so its caches last across chunks."""

    def __init__(self, reader: CorpusReader, vocab: Vocabulary, resolver: ImageResolver, val_fraction: float,
                 directory: str | Path, max_image_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.reader = reader
        self.labeller = RowLabeller(vocab, reader.decode_tag, reader.tag_encoding)
        self.resolver = resolver
        self.val_fraction = val_fraction
        self.directory = Path(directory)
        self.max_image_bytes = max_image_bytes

    def __call__(self, task: tuple[int, Any]) -> PartSummary:
        index, chunk = task
        batch = self.reader.read_chunk(chunk)
        table, summary = self.scan(index, batch)
        self.write(table, summary)
        return summary

    def scan(self, index: int, batch: RecordBatch) -> tuple[pa.Table, PartSummary]:
        """The labelled rows of ``batch`` as a part table, and the chunk's summary."""
        keys = batch.keys.cast(pa.string())
        occurrences = TagOccurrences.of(batch.tags)
        labels = self.labeller(occurrences)
        labelled = pc.greater(pc.list_value_length(labels), 0).to_numpy(zero_copy_only=False)
        no_label = SkipReport()
        unlabelled = np.flatnonzero(~labelled)
        no_label.counts = {"no_label": len(unlabelled)} if len(unlabelled) else {}
        if len(unlabelled):
            no_label.examples = {"no_label": keys.take(unlabelled[:no_label.max_examples]).to_pylist()}
        rows = np.flatnonzero(labelled)
        table, image_bytes = self._rows(batch, keys, occurrences, labels, rows)
        return table, PartSummary(index, len(batch), len(rows), no_label, image_bytes)

    def _rows(self, batch: RecordBatch, keys: pa.StringArray, occurrences: TagOccurrences, labels: pa.ListArray,
              rows: np.ndarray) -> tuple[pa.Table, int]:
        """The part table of the labelled ``rows``, and the image bytes read for it."""
        take = pa.array(rows, pa.int64())
        source_keys = keys.take(take).to_pylist()
        label_lists = labels.take(take)
        tag_lists = _decoded_tags(batch.tags, occurrences, self.reader.decode_tag).take(take)
        meta = _meta_rows(batch.meta, take)
        images = [batch.images[i] for i in rows.tolist()] if batch.images is not None else [None] * len(rows)
        columns = _RowColumns(len(rows))
        cache: dict[ImageSource, tuple[int, bytes, int]] = {}
        details = _detail_texts(label_lists, tag_lists)
        fields = [name for name in PROVENANCE_FIELDS if batch.meta is not None and name in batch.meta.column_names]
        for i, (source_key, image, row_meta, detail) in enumerate(zip(source_keys, images, meta, details)):
            key = tar_safe_key(source_key)
            source = self.resolver.resolve(Record(source_key, [], image, row_meta))
            status, digest = IMAGE_MISSING, _NO_DIGEST
            if source is not None:
                status, digest, _ = cache.get(source) or cache.setdefault(source, self._digest(source))
            provenance = {name: row_meta[name] for name in fields if _json_scalar(row_meta[name])}
            columns.add(i, key, source_key, self.val_fraction, source, status, digest, provenance, detail)
        return columns.table(label_lists, tag_lists), sum(size for _, _, size in cache.values())

    def _digest(self, source: ImageSource) -> tuple[int, bytes, int]:
        """The image's status, the digest of its bytes and how many bytes were read."""
        try:
            data = read_image(source, self.max_image_bytes)
        except MissingImage:
            return IMAGE_MISSING, _NO_DIGEST, 0
        except ImageSkip:
            return IMAGE_TOO_LARGE, _NO_DIGEST, 0
        return IMAGE_OK, hashlib.blake2b(data, digest_size=16).digest(), len(data)

    def write(self, table: pa.Table, summary: PartSummary) -> None:
        """Write one part atomically: a part present in the scan directory is complete."""
        metadata = {PART_META_KEY: json.dumps(summary.to_dict(), ensure_ascii=False).encode("utf-8")}
        with atomic_open(self.directory / part_name(summary.index), "wb") as f:
            pq.write_table(table.replace_schema_metadata(metadata), f, row_group_size=ROW_GROUP_ROWS)


def _decoded_tags(tags: pa.ListArray, occurrences: TagOccurrences, decode) -> pa.ListArray:
    """Every row's tags as the user wrote them, decoded once per distinct raw tag."""
    distinct = pa.array([decode(raw) for raw in occurrences.distinct.to_pylist()], pa.string())
    flat = distinct.take(pa.array(occurrences.tag)) if len(occurrences.tag) else pa.array([], pa.string())
    lengths = pc.fill_null(pc.list_value_length(tags), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(tags) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def _meta_rows(meta: pa.Table | None, take: pa.Array) -> list[dict[str, Any]]:
    """The metadata fields the resolver and the samples need, one dict per taken row."""
    if meta is None:
        return [{} for _ in range(len(take))]
    wanted = [name for name in dict.fromkeys((*_RESOLVER_FIELDS, *PROVENANCE_FIELDS)) if name in meta.column_names]
    if not wanted:
        return [{} for _ in range(len(take))]
    return meta.select(wanted).take(take).to_pylist()


def _detail_texts(labels: pa.ListArray, tags: pa.ListArray) -> list[str]:
    """Per row, its labels and tags as one string: part of what the row's detail digest covers."""
    label_text = pc.binary_join(pc.cast(labels, pa.list_(pa.string())), ",")
    tag_text = pc.binary_join(pc.cast(tags, pa.list_(pa.string())), "\x1f")
    return pc.binary_join_element_wise(label_text, tag_text, "\x1e").to_pylist()


class _RowColumns:
    """The columns of a part, filled row by row."""

    def __init__(self, n: int) -> None:
        self.key_hash = bytearray(16 * n)
        self.digest = bytearray(16 * n)
        self.detail = bytearray(16 * n)
        self.image = np.zeros(n, np.int8)
        self.val = np.zeros(n, bool)
        self.source_key: list[str] = []
        self.key: list[str] = []
        self.kind = np.zeros(n, np.int8)
        self.path: list[str | None] = []
        self.member: list[str | None] = []
        self.offset = np.zeros(n, np.int64)
        self.size = np.zeros(n, np.int64)
        self.inline: list[bytes | None] = []
        self.provenance: list[str] = []

    def add(self, i: int, key: str, source_key: str, val_fraction: float, source: ImageSource | None,
            status: int, digest: bytes, provenance: dict[str, Any], detail: str) -> None:
        at = slice(16 * i, 16 * i + 16)
        self.key_hash[at] = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
        self.digest[at] = digest
        self.image[i] = status
        self.val[i] = split_of(source_key, val_fraction) == "val"
        self.source_key.append(source_key)
        self.key.append(key)
        path = member = inline = None
        if isinstance(source, FileImage):
            self.kind[i], path = _SOURCE_FILE, source.path
        elif isinstance(source, TarMember):
            self.kind[i], path, member = _SOURCE_MEMBER, source.tar, source.member
            self.offset[i], self.size[i] = source.offset, source.size
        elif isinstance(source, InlineImage):
            self.kind[i], inline = _SOURCE_INLINE, source.data
        self.path.append(path)
        self.member.append(member)
        self.inline.append(inline)
        text = _COMPACT_JSON.encode(provenance)
        self.provenance.append(text)
        if status == IMAGE_OK:
            # Everything a sample of this row is made of, but the image's pixels: its bytes' digest
            # sits beside it. A unit's fingerprint is built from both (data/shards/plan.py).
            what = "\x1e".join((key, source_key, detail, text, f"{self.kind[i]}:{path}:{member}:"
                                f"{self.offset[i]}:{self.size[i]}"))
            self.detail[at] = hashlib.blake2b(what.encode("utf-8"), digest_size=16).digest()

    def table(self, labels: pa.ListArray, tags: pa.ListArray) -> pa.Table:
        n = len(self.key)
        fixed = pa.binary(16)
        return pa.table({
            "key_hash": pa.FixedSizeBinaryArray.from_buffers(fixed, n, [None, pa.py_buffer(bytes(self.key_hash))]),
            "image": pa.array(self.image), "val": pa.array(self.val),
            "digest": pa.FixedSizeBinaryArray.from_buffers(fixed, n, [None, pa.py_buffer(bytes(self.digest))]),
            "detail": pa.FixedSizeBinaryArray.from_buffers(fixed, n, [None, pa.py_buffer(bytes(self.detail))]),
            "source_key": pa.array(self.source_key, pa.string()), "key": pa.array(self.key, pa.string()),
            "labels": labels, "tags": tags,
            "source_kind": pa.array(self.kind), "source_path": pa.array(self.path, pa.string()),
            "member": pa.array(self.member, pa.string()), "offset": pa.array(self.offset),
            "size": pa.array(self.size), "inline": pa.array(self.inline, pa.binary()),
            "provenance": pa.array(self.provenance, pa.string()),
        })


_CANDIDATE_COLUMNS = ["key", "source_key", "labels", "tags", "source_kind", "source_path", "member", "offset",
                      "size", "inline", "provenance"]


def read_candidates(directory: str | Path, refs: Iterable[tuple[int, int]]) -> list[Candidate]:
    """The candidates at ``(part, row)`` references, in the order given."""
    refs = list(refs)
    by_part: dict[int, list[int]] = {}
    for part, row in refs:
        by_part.setdefault(part, []).append(row)
    found: dict[tuple[int, int], Candidate] = {}
    for part, rows in by_part.items():
        table = read_part_rows(Path(directory) / part_name(part), rows, _CANDIDATE_COLUMNS)
        for row, values in zip(rows, table.to_pylist()):
            found[part, row] = _candidate(values)
    return [found[ref] for ref in refs]


def read_part_rows(path: Path, rows: Sequence[int], columns: Sequence[str]) -> pa.Table:
    """``columns`` of the given rows of a part, in that order; only the row groups holding them
    are read."""
    parquet = pq.ParquetFile(path)
    sizes = np.array([parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)], np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)))
    wanted = np.asarray(rows, dtype=np.int64)
    group = np.searchsorted(starts, wanted, side="right") - 1
    groups = np.unique(group)
    table = parquet.read_row_groups(groups.tolist(), columns=list(columns))
    at = np.zeros(len(sizes), dtype=np.int64)  # where each group read begins in ``table``
    at[groups] = np.cumsum(sizes[groups]) - sizes[groups]
    return table.take(pa.array(wanted - starts[group] + at[group]))


def _candidate(row: dict[str, Any]) -> Candidate:
    kind = row["source_kind"]
    if kind == _SOURCE_FILE:
        image: ImageSource = FileImage(row["source_path"])
    elif kind == _SOURCE_MEMBER:
        image = TarMember(row["source_path"], row["member"], row["offset"], row["size"])
    else:
        image = InlineImage(row["inline"])
    return Candidate(row["key"], row["source_key"], tuple(row["labels"]), tuple(row["tags"]), image,
                     tuple(json.loads(row["provenance"]).items()))
