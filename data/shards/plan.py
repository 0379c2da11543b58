"""The planning pass of the shard builder: corpus order in, fixed work units out.

Every decision that depends on more than one record is made here, streaming the corpus once in
order, so that workers can build units independently and the output does not depend on how many
there are or which finishes first:

- labels (records with no vocab label are skipped as ``no_label``);
- the tar-safe sample key (``duplicate_key`` when two records map to one);
- the image source (``missing_image`` when none is found or it cannot be read);
- exact duplicates: the blake2b-128 of the *source bytes*; the first record in corpus order keeps
  the image, later ones are skipped as ``duplicate`` (hashing is done by a thread pool, in order);
- train or val, from a hash of the record key, so a record's split never changes when the corpus
  grows or the shard size changes;
- units: ``shard_size`` candidates per split, unit ``i`` of a split becomes shard ``<split>-i``.
  Images that turn out corrupt in the worker leave a shard a little short of ``shard_size``.
"""
from __future__ import annotations

import hashlib
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from data.corpus.record import Record
from data.images.sources import ImageResolver, ImageSource, MissingImage, read_image
from data.shards.directory import SPLITS
from data.skip_report import SkipReport
from data.vocab.vocabulary import Vocabulary

_SAFE_KEY = re.compile(r"[A-Za-z0-9_-]{1,80}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Metadata copied into each sample's json when present: where the image came from and its licence.
PROVENANCE_FIELDS = ("photo_id", "id", "download_url", "page_url", "url", "license", "license_name",
                     "license_url", "user_nsid")


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


@dataclass(frozen=True)
class Unit:
    """One output shard to build: ``<split>-<index>.tar`` from ``candidates``; ``order`` is its
    position among all units (the node split uses ``order % num_nodes``)."""

    split: str
    index: int
    order: int
    candidates: tuple[Candidate, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"

    def fingerprint(self, settings_digest: str) -> str:
        """Changes whenever anything that goes into this shard's bytes changes."""
        h = hashlib.sha256(settings_digest.encode())
        h.update(repr((self.split, self.index, self.candidates)).encode("utf-8"))
        return h.hexdigest()


@dataclass
class PlanStats:
    records: int = 0
    candidates: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    skips: SkipReport = field(default_factory=SkipReport)
    units: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})


def _provenance(record: Record) -> tuple[tuple[str, Any], ...]:
    return tuple((name, record.meta[name]) for name in PROVENANCE_FIELDS if _json_scalar(record.meta.get(name)))


def _json_scalar(value: Any) -> bool:
    # NaN and infinities are not JSON; empty strings say nothing.
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) or (isinstance(value, str) and value != "")


class Planner:
    """Turns records (in corpus order) into :class:`Unit` objects; skip counts land in ``stats``."""

    def __init__(self, vocab: Vocabulary, resolver: ImageResolver, shard_size: int,
                 val_fraction: float, hash_threads: int = 4, batch_size: int = 256) -> None:
        self.vocab = vocab
        self.canonicalizer = vocab.canonicalizer()
        self.resolver = resolver
        self.shard_size = shard_size
        self.val_fraction = val_fraction
        self.hash_threads = hash_threads
        self.batch_size = batch_size
        self.stats = PlanStats()
        self._keys: set[str] = set()
        self._digests: set[bytes] = set()
        self._buffers: dict[str, list[Candidate]] = {s: [] for s in SPLITS}
        self._order = 0

    def units(self, records: Iterable[Record]) -> Iterator[Unit]:
        with ThreadPoolExecutor(self.hash_threads) as pool:
            batch: list[Candidate] = []
            for record in records:
                candidate = self._candidate(record)
                if candidate is not None:
                    batch.append(candidate)
                if len(batch) >= self.batch_size:
                    yield from self._admit(batch, pool)
                    batch = []
            yield from self._admit(batch, pool)
        for split in SPLITS:
            if self._buffers[split]:
                yield self._unit(split)

    def _candidate(self, record: Record) -> Candidate | None:
        self.stats.records += 1
        source_key = str(record.key)
        labels = self.vocab.label_ids(record.tags, self.canonicalizer)
        if not labels:
            self.stats.skips.add("no_label", source_key)
            return None
        key = tar_safe_key(source_key)
        if key in self._keys:
            self.stats.skips.add("duplicate_key", source_key)
            return None
        self._keys.add(key)
        source = self.resolver.resolve(record)
        if source is None:
            self.stats.skips.add("missing_image", source_key)
            return None
        return Candidate(key, source_key, tuple(labels), tuple(record.tags), source, _provenance(record))

    def _admit(self, batch: list[Candidate], pool: ThreadPoolExecutor) -> Iterator[Unit]:
        for candidate, digest in zip(batch, pool.map(self._digest, batch)):
            if digest is None:
                self.stats.skips.add("missing_image", candidate.source_key)
            elif digest in self._digests:
                self.stats.skips.add("duplicate", candidate.source_key)
            else:
                self._digests.add(digest)
                split = split_of(candidate.source_key, self.val_fraction)
                self.stats.candidates[split] += 1
                self._buffers[split].append(candidate)
                if len(self._buffers[split]) == self.shard_size:
                    yield self._unit(split)

    def _digest(self, candidate: Candidate) -> bytes | None:
        try:
            data = read_image(candidate.image)
        except MissingImage:
            return None
        return hashlib.blake2b(data, digest_size=16).digest()

    def _unit(self, split: str) -> Unit:
        unit = Unit(split, self.stats.units[split], self._order, tuple(self._buffers[split]))
        self._buffers[split] = []
        self.stats.units[split] += 1
        self._order += 1
        return unit
