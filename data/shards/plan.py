"""The plan phase of the shard builder: the one serial step, over the manifest parts of the scan.

Every decision that depends on more than one record is made here, so that units can then be built
independently by any worker of any node and the output does not depend on how many there are or
which finishes first. It reads only the fixed-width columns of the parts (16-byte digests of the
sample key and of the image bytes, the image status, the split), never an image and never a
string beyond the skip examples, in corpus order (parts in chunk order, rows in part order):

- ``no_label``: counted by the scan, merged here in corpus order;
- ``duplicate_key``: a labelled record whose tar-safe key an earlier labelled record has;
- ``missing_image`` / ``too_large``: no image, or one over the size limit (from the scan);
- ``duplicate``: an image whose bytes (blake2b-128) an earlier kept record's image has: the first
  copy in corpus order is kept;
- train or val, from a hash of the record key (decided in the scan), so a record's split never
  changes when the corpus grows or the shard size changes;
- units: ``shard_size`` candidates per split; unit ``i`` of a split becomes shard ``<split>-i``.
  Images that turn out corrupt (or near-duplicates of the eval set) when the unit is built leave a
  shard a little short of ``shard_size``.

"First in corpus order" is found by sorting: a stable sort of the digests' first 8 bytes keeps equal
values in corpus order, so the first of each run of equal values is its first copy (all 16 bytes
are compared; two digests that share only their first 8 bytes are sorted on all 16). The plan holds
about 70 bytes per labelled row at its peak (``scripts/bench/shards_scale.py`` measures it). It
writes ``candidates-<id>.arrow`` (per unit, in unit order, the part and row of each candidate) and
then ``plan.json`` (the settings, the skips, and per unit its name, order,
candidate range and fingerprint); plan.json's presence means the plan is complete.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic_write import atomic_open, write_json
from data.shards.directory import SPLITS
from data.shards.scan import IMAGE_OK, IMAGE_SKIPS, part_name, read_part_rows, read_summary
from data.skip_report import SkipReport

PLAN_FORMAT = "openwsl-shard-plan"
PLAN_VERSION = 1
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Unit:
    """One output shard to build: ``<split>-<index>.tar`` from rows ``start .. start + count`` of the
    candidates file. ``order`` is its position among all units (the node split uses
    ``order % num_nodes``); ``fingerprint`` changes whenever anything that goes into its bytes does."""

    split: str
    index: int
    order: int
    start: int
    count: int
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


@dataclass
class Plan:
    """What the plan phase decided; ``plan.json`` in the build directory."""

    header: dict[str, Any]
    settings_digest: str
    scan_digest: str
    records_read: int
    skips: SkipReport
    units: list[Unit]
    candidates: str  # file name of the candidate references, beside plan.json

    def unit_counts(self) -> dict[str, int]:
        return {split: sum(u.split == split for u in self.units) for split in SPLITS}

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "settings_digest": self.settings_digest,
                "scan_digest": self.scan_digest, "header": self.header, "records_read": self.records_read,
                "planning_skips": self.skips.to_dict(), "candidates": self.candidates,
                "units": [[u.name, u.order, u.start, u.count, u.fingerprint] for u in self.units]}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "Plan":
        if obj.get("format") != PLAN_FORMAT or obj.get("version") != PLAN_VERSION:
            raise ValueError("not a build plan of this version")
        units = []
        for name, order, start, count, fingerprint in obj["units"]:
            split, _, index = name.rpartition("-")
            units.append(Unit(split, int(index), order, start, count, fingerprint))
        return cls(obj["header"], obj["settings_digest"], obj["scan_digest"], obj["records_read"],
                   SkipReport.from_dict(obj["planning_skips"]), units, obj["candidates"])

    def candidate_refs(self, build_dir: Path, unit: Unit) -> list[tuple[int, int]]:
        """(part, row) of each of ``unit``'s candidates, in order."""
        with pa.memory_map(str(build_dir / self.candidates)) as source:
            table = pa.ipc.open_file(source).read_all().slice(unit.start, unit.count)
            return list(zip(table["part"].to_pylist(), table["row"].to_pylist()))


def read_plan(build_dir: Path) -> Plan | None:
    """The plan in ``build_dir``, or None when there is none (or it is unreadable: rewritten next)."""
    try:
        return Plan.from_dict(json.loads((build_dir / PLAN_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def first_occurrences(digests: np.ndarray) -> np.ndarray:
    """Per row of an ``(n, 16)`` uint8 array, whether no row before it is equal.

    Rows are split into two 64-bit words; a stable sort on the first word keeps equal rows in their
    order, so the first row of each run of equal rows is the first occurrence. When two different
    rows share their first word, the rows are sorted on both words instead."""
    first = np.zeros(len(digests), dtype=bool)
    if len(digests) == 0:
        return first
    words = np.ascontiguousarray(digests, dtype=np.uint8).view("<u8")  # (n, 2)
    order = np.argsort(words[:, 0], kind="stable")
    leading = words[order, 0]
    same = leading[1:] == leading[:-1]
    del leading
    pairs = np.flatnonzero(same)
    if not np.array_equal(words[order[pairs], 1], words[order[pairs + 1], 1]):
        order = np.lexsort((words[:, 1], words[:, 0]))
        ordered = words[order]
        same = (ordered[1:] == ordered[:-1]).all(axis=1)
        del ordered
    first[order[0]] = True
    first[order[1:][~same]] = True
    return first


class _Parts:
    """The scan's parts, read column by column; rows are numbered across parts in corpus order."""

    def __init__(self, directory: Path, count: int) -> None:
        self.paths = [directory / part_name(i) for i in range(count)]
        summaries = [read_summary(path) for path in self.paths]
        self.records = sum(s.records for s in summaries)
        self.no_label = SkipReport()
        for summary in summaries:
            self.no_label.merge(summary.no_label)
        self.starts = np.concatenate(([0], np.cumsum([s.labelled for s in summaries]))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def column(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A fixed-width column over all parts (or at the given sorted global rows only) as numpy:
        ``(n, 16)`` uint8 for the 16-byte digests, else one value per row. Filled part by part, so
        only the result and one part's column are held."""
        out: np.ndarray | None = None
        count = len(self) if rows is None else len(rows)
        for i, path in enumerate(self.paths):
            if self.starts[i + 1] == self.starts[i]:
                continue
            column = pq.read_table(path, columns=[name]).column(name)
            if pa.types.is_fixed_size_binary(column.type):
                values = np.concatenate([_rows_of_16(chunk) for chunk in column.chunks])
            else:
                values = column.to_numpy()
            if out is None:
                out = np.empty((count, *values.shape[1:]), dtype=values.dtype)
            if rows is None:
                out[self.starts[i]:self.starts[i + 1]] = values
            else:
                lo, hi = np.searchsorted(rows, self.starts[i:i + 2])
                out[lo:hi] = values[rows[lo:hi] - self.starts[i]]
        return out if out is not None else np.zeros((0, 16), np.uint8)

    def refs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, row in part) of global rows."""
        part = np.searchsorted(self.starts, rows, side="right") - 1
        return part.astype(np.int32), (rows - self.starts[part]).astype(np.int32)

    def source_keys(self, rows: np.ndarray) -> list[str]:
        part, row = self.refs(rows)
        keys: list[str] = []
        for p in np.unique(part):
            keys += read_part_rows(self.paths[p], row[part == p], ["source_key"])["source_key"].to_pylist()
        return keys


def make_plan(scan_dir: Path, parts: int, shard_size: int, header: dict[str, Any], settings_digest: str,
              scan_digest: str, build_dir: Path, progress: Callable[[str], None] = lambda _: None) -> Plan:
    """Decide the skips and the units from the scan's ``parts`` parts, write the plan files."""
    table = _Parts(scan_dir, parts)
    skips = table.no_label
    progress(f"{table.records} records, {len(table)} labelled")

    def skip(reason: str, mask: np.ndarray) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            skips.counts[reason] = skips.counts.get(reason, 0) + len(rows)
            skips.examples[reason] = table.source_keys(rows[:skips.max_examples])

    # Labelled records claim their sample key in corpus order, whatever becomes of their image.
    claimed = first_occurrences(table.column("key_hash"))
    skip("duplicate_key", ~claimed)
    image = table.column("image")
    for code, reason in IMAGE_SKIPS.items():
        skip(reason, claimed & (image == code))
    readable = np.flatnonzero(claimed & (image == IMAGE_OK))
    del claimed, image
    digests = table.column("digest", readable)
    first = first_occurrences(digests)
    skip("duplicate", _mask(len(table), readable[~first]))
    kept, digests = readable[first], digests[first]
    del readable, first
    val = table.column("val", kept).astype(bool)
    units, order = _units(kept, val, shard_size)
    # What each candidate's sample is made of, and its image bytes: a unit's fingerprint covers both.
    detail = table.column("detail", kept)
    plan_units: list[Unit] = []
    start = 0
    for split, index, members in units:
        fingerprint = hashlib.sha256(settings_digest.encode())
        fingerprint.update(f"{split}-{index}".encode())
        fingerprint.update(np.concatenate([detail[members], digests[members]], axis=1).tobytes())
        plan_units.append(Unit(split, index, len(plan_units), start, len(members), fingerprint.hexdigest()))
        start += len(members)
    del detail, digests
    part, row = table.refs(kept[order])
    candidates = f"candidates-{hashlib.sha256((settings_digest + scan_digest).encode()).hexdigest()[:16]}.arrow"
    _write_candidates(build_dir / candidates, part, row)
    plan = Plan(header, settings_digest, scan_digest, table.records, skips, plan_units, candidates)
    write_json(build_dir / PLAN_FILE, plan.to_dict(), indent=None)
    return plan


def _rows_of_16(values: pa.Array) -> np.ndarray:
    """A fixed_size_binary(16) array as an (n, 16) uint8 array (no copy)."""
    raw = np.frombuffer(values.buffers()[1], dtype=np.uint8) if len(values) else np.zeros(0, np.uint8)
    return raw[values.offset * 16:(values.offset + len(values)) * 16].reshape(-1, 16)


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def _units(kept: np.ndarray, val: np.ndarray, shard_size: int) -> tuple[list[tuple[str, int, np.ndarray]], np.ndarray]:
    """Units as (split, index, positions among the kept rows), in unit order, and the positions of
    all their candidates in that order. A full unit's place in the order is where its last
    candidate comes in the corpus; the two last, partial units follow, train first."""
    full, tails = [], []
    for split, members in (("train", np.flatnonzero(~val)), ("val", np.flatnonzero(val))):
        whole = len(members) // shard_size
        for index in range(whole):
            chunk = members[index * shard_size:(index + 1) * shard_size]
            full.append((int(chunk[-1]), split, index, chunk))
        if len(members) > whole * shard_size:
            tails.append((split, whole, members[whole * shard_size:]))
    full.sort(key=lambda unit: unit[0])
    units = [(split, index, chunk) for _, split, index, chunk in full] + tails
    order = np.concatenate([chunk for _, _, chunk in units]) if units else np.zeros(0, dtype=np.int64)
    return units, order


def _write_candidates(path: Path, part: np.ndarray, row: np.ndarray) -> None:
    table = pa.table({"part": pa.array(part, pa.int32()), "row": pa.array(row, pa.int32())})
    with atomic_open(path, "wb") as f:
        with pa.ipc.new_file(f, table.schema) as writer:
            writer.write_table(table)
