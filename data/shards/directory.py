"""Where a stream's shards come from: a shard directory, a brace pattern, or any webdataset URL.

A *shard directory* (written by data/shards/build.py) carries ``info.json`` with the per-shard sample
counts and the per-label counts over the train shards; the loader uses them to size epochs and to
set up hashtag resampling. A brace pattern (``/data/train-{000000..000099}.tar``) or a URL that
webdataset's ``gopen`` opens (``pipe:aws s3 cp s3://bucket/train-000000.tar -``, ``https://...``)
names the shards directly; several can be joined with ``::``. Without info.json the sample counts
are unknown, so a training run must state its epoch size in images.

A *mixture* is a list of weighted shard directories, ``[{"path": a, "weight": 3}, {"path": b,
"weight": 1}]`` (mappings, or objects with ``path`` and ``weight``, such as pretraining's config
entries): one source over the union of their shards, in which set i supplies the share
``weight_i / Σ weight`` of the images a resampled stream reads (:meth:`ShardSource.shard_weights`;
docs/loader.md, "Weighted mixing"). Every set must be a shard directory with info.json, hold the
split asked for, and record the same vocabulary sha256; the union's label counts are the sets'
counts summed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from data.errors import UserError
from data.untrusted_json import InvalidJSON, parse_json

INFO_FILE = "info.json"
#: the splits of a shard directory: ``train-NNNNNN.tar`` and ``val-NNNNNN.tar``
SPLITS = ("train", "val")
#: what a shard name in info.json may be: a plain file name in the directory. Names are joined to
#: the directory and opened with webdataset's gopen, so anything else could leave the directory
#: ('../', '/abs') or run a command ('pipe:...', a name that is a URL, '-' for stdin).
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Schemes gopen understands; anything else is a local path and must exist.
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://", "hf://", "file:")


@dataclass(frozen=True)
class ShardSource:
    """The shard URLs of one split, with what info.json knows about them (or None)."""

    urls: tuple[str, ...]
    description: str
    samples_per_shard: tuple[int, ...] | None = None
    label_counts: tuple[int, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: per shard, the sha256 (hex) info.json records for its bytes, or None where it records none
    sha256: tuple[str | None, ...] | None = None
    #: a mixture's shard sets (one directory each; their urls, in order, make up ``urls``) and weights
    parts: tuple["ShardSource", ...] = ()
    weights: tuple[float, ...] = ()

    def shard_weights(self) -> tuple[float, ...] | None:
        """Per URL, its relative chance in a resampled draw: ``weight_i / N_i`` for every shard of set
        i (N_i its images), so a draw takes set i's shards with probability ∝ weight_i / N_i x
        shards_i and reads images of set i in the proportion weight_i / Σ weight, whatever the sets'
        shard sizes. None for a single set (each shard equally likely)."""
        if not self.parts:
            return None
        return tuple(weight / part.num_samples for part, weight in zip(self.parts, self.weights)
                     for _ in part.urls)

    @property
    def num_samples(self) -> int | None:
        return None if self.samples_per_shard is None else sum(self.samples_per_shard)

    @property
    def num_labels(self) -> int | None:
        if self.label_counts is not None:
            return len(self.label_counts)
        vocab = self.info.get("vocab", {})
        return vocab.get("num_labels") if isinstance(vocab, dict) else None


def resolve_shards(source: str | Path | Sequence[Any], split: str = "train") -> ShardSource:
    """The shards of ``split`` named by ``source``: a directory, a pattern, a URL, a URL list, or a
    list of weighted shard directories (a mixture)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if isinstance(source, (list, tuple)) and any(not isinstance(item, (str, Path)) for item in source):
        return _mixture(source, split)
    if isinstance(source, (list, tuple)):
        return _from_urls([str(u) for u in source], f"{len(source)} listed shards")
    text = str(source)
    if not _is_remote(text) and Path(text).is_dir():
        return _from_directory(Path(text), split)
    # Imported here: webdataset imports torch, which the shard builder (it needs SPLITS) does not.
    from webdataset.shardlists import expand_urls  # noqa: PLC0415

    return _from_urls(expand_urls(text), text)


def _is_remote(url: str) -> bool:
    return url.startswith(_REMOTE_PREFIXES)


def _from_urls(urls: list[str], description: str) -> ShardSource:
    if not urls:
        raise UserError(f"shard source {description!r} names no shards; give a shard directory, "
                        "a brace pattern such as train-{000000..000009}.tar, or a URL")
    missing = [u for u in urls if not _is_remote(u) and not Path(u).is_file()]
    if missing:
        raise UserError(f"shard {missing[0]} does not exist ({len(missing)} of {len(urls)} shards "
                        f"of {description!r} missing); check the path or the brace pattern")
    return ShardSource(tuple(urls), description)


def _from_directory(directory: Path, split: str) -> ShardSource:
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        urls = sorted(str(p) for p in directory.glob(f"{split}-*.tar"))
        if not urls:
            raise UserError(f"{directory} has no {INFO_FILE} and no {split}-*.tar shards; build it "
                            "with scripts/build_shards.py or pass a brace pattern")
        return ShardSource(tuple(urls), f"{directory} ({split}, no {INFO_FILE})")
    info = _read_info(info_path)
    entries = _shard_entries(info, info_path, split)
    if not entries:
        raise UserError(f"{info_path} lists no {split} shards; rebuild the shards or use "
                        f"split='{'val' if split == 'train' else 'train'}'")
    urls = tuple(str(directory / name) for name, _, _ in entries)
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise UserError(f"{missing[0]} is listed in {info_path} but missing; rebuild or finalize "
                        "the shard directory with scripts/build_shards.py")
    return ShardSource(urls, f"{directory} ({split})", tuple(n for _, n, _ in entries),
                       _label_counts(info, info_path, split), info, tuple(digest for _, _, digest in entries))


def _mixture(sets: Sequence[Any], split: str) -> ShardSource:
    """One source over weighted shard directories (the module docstring)."""
    parts, weights, seen = [], [], {}
    for index, entry in enumerate(sets):
        path, weight = _set_entry(entry, index)
        where = f"shard set {index} ({path})"
        directory = Path(path)
        if not directory.is_dir():
            raise UserError(f"{where} is not a directory; weighted mixing takes shard directories built by "
                            "scripts/build_shards.py")
        if not (directory / INFO_FILE).is_file():
            raise UserError(f"{where} has no {INFO_FILE}: weighted mixing needs each set's sample counts and "
                            "vocabulary sha256; build the directory with scripts/build_shards.py")
        resolved = directory.resolve()
        if resolved in seen:
            raise UserError(f"{where} is listed twice (also as shard set {seen[resolved]}); list it once "
                            "with the weights added up")
        seen[resolved] = index
        part = _from_directory(directory, split)
        if not part.num_samples:
            raise UserError(f"{where}: its {INFO_FILE} counts no {split} samples; rebuild it with "
                            "scripts/build_shards.py or leave it out of the mixture")
        parts.append(part)
        weights.append(weight)
    _check_same_vocabulary(parts)
    if len(parts) == 1:
        return parts[0]
    counts = [part.label_counts for part in parts]
    label_counts = None if any(c is None for c in counts) else tuple(map(sum, zip(*counts)))
    shares = ", ".join(f"{part.description} x{weight:g}" for part, weight in zip(parts, weights))
    return ShardSource(tuple(u for part in parts for u in part.urls), f"{len(parts)} shard sets: {shares}",
                       tuple(n for part in parts for n in part.samples_per_shard), label_counts,
                       {"vocab": parts[0].info.get("vocab")},
                       tuple(d for part in parts for d in (part.sha256 or (None,) * len(part.urls))),
                       tuple(parts), tuple(weights))


def _set_entry(entry: Any, index: int) -> tuple[str, float]:
    """(path, weight) of one mixture entry: a mapping with 'path' (and 'weight', default 1) or an
    object with those attributes (a plain path: weight 1); the weight a positive finite number."""
    if isinstance(entry, (str, Path)):
        path, weight = entry, 1.0
    elif isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"path", "weight"})
        if unknown:
            raise UserError(f"shard set {index} has unknown key {unknown[0]!r}; an entry is {{path: <shard "
                            "directory>, weight: <number>}}")
        path, weight = entry.get("path"), entry.get("weight", 1.0)
    else:
        path, weight = getattr(entry, "path", None), getattr(entry, "weight", 1.0)
    if not isinstance(path, (str, Path)) or not str(path):
        raise UserError(f"shard set {index} has no path; an entry is {{path: <shard directory>, weight: <number>}}")
    if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
            or weight <= 0):
        raise UserError(f"shard set {index} ({path}) has weight {weight!r}; a weight is a positive finite "
                        "number (the set's share of the images is weight / sum of the weights)")
    return str(path), float(weight)


def _check_same_vocabulary(parts: list[ShardSource]) -> None:
    """Every set records one vocabulary sha256 in info.json, the same for all."""
    digests = []
    for part in parts:
        vocab = part.info.get("vocab")
        digest = vocab.get("sha256") if isinstance(vocab, dict) else None
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise UserError(f"{part.description}: its {INFO_FILE} records no vocabulary sha256 (vocab.sha256), so "
                            "mixing cannot check that the sets share one vocabulary; rebuild it with "
                            "scripts/build_shards.py")
        digests.append(digest)
    for part, digest in zip(parts[1:], digests[1:]):
        if digest != digests[0]:
            raise UserError(f"{parts[0].description} and {part.description} were built with different "
                            f"vocabularies (sha256 {digests[0][:12]}... and {digest[:12]}...): label ids would "
                            "mean different hashtags; rebuild one set with the other's vocab.json")
    widths = {len(part.label_counts) for part in parts if part.label_counts is not None}
    if len(widths) > 1:
        raise UserError(f"{parts[0].description} and {parts[1].description} record the same vocabulary sha256 "
                        f"but label_counts of different lengths ({sorted(widths)}); rebuild them with "
                        "scripts/build_shards.py --finalize")


def _label_counts(info: dict[str, Any], path: Path, split: str) -> tuple[int, ...] | None:
    """The split's per-label image counts, or ``None`` when info.json has none; anything but a list
    of whole numbers >= 0 is one error line naming the file and the key."""
    key = "label_counts" if split == "train" else "val_label_counts"
    counts = info.get(key)
    if counts is None:
        return None
    if not isinstance(counts, list) or not all(type(c) is int and c >= 0 for c in counts):
        bad = counts if not isinstance(counts, list) else next(
            c for c in counts if not (type(c) is int and c >= 0))
        raise UserError(f"{path}: {key!r} must be a list of per-label image counts (whole numbers >= 0), "
                        f"found {str(json.dumps(bad))[:60]}; rebuild it with scripts/build_shards.py --finalize")
    return tuple(counts)


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = parse_json(path.read_bytes())
    except (OSError, InvalidJSON) as err:
        raise UserError(f"cannot read {path}: {err}; rebuild it with scripts/build_shards.py "
                        "--finalize") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} is not a JSON object; rebuild it with scripts/build_shards.py --finalize")
    return info


def _shard_entries(info: dict[str, Any], path: Path, split: str) -> list[tuple[str, int, str | None]]:
    """(name, samples, sha256 or None) of each shard of ``split``, the names checked."""
    shards = info.get("shards")
    listed = shards.get(split, []) if isinstance(shards, dict) else None
    if not isinstance(listed, list):
        raise UserError(f"{path} has no 'shards' object with a {split!r} list; it was not written "
                        "by scripts/build_shards.py — rebuild it")
    try:
        entries = [(entry["name"], int(entry["samples"]), entry.get("sha256")) for entry in listed]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: every entry of shards.{split} needs 'name' and 'samples'; "
                        "rebuild it with scripts/build_shards.py --finalize") from None
    for name, _, digest in entries:
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise UserError(f"{path}: shards.{split} names {name!r}, which is not a plain .tar file name "
                            "in that directory (letters, digits, '_', '-', '.'; no path, URL or "
                            "command); refusing the directory: rebuild it with scripts/build_shards.py")
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise UserError(f"{path}: the sha256 of shard {name} is {digest!r}, not 64 hex digits; rebuild "
                            "it with scripts/build_shards.py --finalize")
    return entries
