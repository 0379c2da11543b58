"""img2dataset output as a corpus: tars of ``<key>.jpg`` + ``<key>.json`` and their Parquet sidecars.

The input is an img2dataset output folder (``00000.tar``, ``00000.parquet``, ``00000_stats.json``
...), one tar, or a brace/glob pattern of tars (``shards/{00000..00127}.tar``, ``shards/*.tar``).
One chunk is one tar with its sidecar (``<stem>.parquet`` beside it, when present).

Tags come from one field of each sample's JSON (``tags_field``), a list of strings or one string
joined by ``tags_delimiter``. A record's image is a :class:`TarMember`: image bytes are never read
here; the shard builder opens the member. Member names are only ever keys, never file paths, so a
'../' or absolute name cannot reach the file system.

``read_chunk(..., tags_only=True)`` reads the sidecar's key, status and tags columns instead of the
tar when the sidecar has the tags column (a few kilobytes instead of the images); it trusts the
sidecar, as img2dataset writes it from the same rows.

Skipped and counted, never fatal: rows whose sidecar status is not "success" (they have no image),
samples with invalid JSON or JSON nested too deep (:func:`data.untrusted_json.parse_json`), a
JSON member over :data:`~data.untrusted_json.MAX_JSON_BYTES` (never read: a hostile tar cannot make
the reader hold a giant member), without an image, without JSON, without the tags
field, with tags of the wrong type, and the rest of a truncated or corrupt tar. The number in a
malformed entry is the tar member's index (sidecar: the row's index), the reason names the tar (or
sidecar) file.
"""
from __future__ import annotations

import difflib
import glob
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import braceexpand
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.corpus.record import CorpusReader, RecordBatch
from data.corpus.table import BAD_TAGS, BAD_VALUE, mixed_column, split_tags, tags_value
from data.errors import UserError
from data.tar_member import IMAGE_SUFFIXES, TarMember, split_member_name
from data.untrusted_json import INVALID, MAX_JSON_BYTES, InvalidJSON, parse_json

# JSON fields left out of a record's metadata: large, and of no use to later stages.
BIG_FIELDS = frozenset({"exif", "error_message"})
BAD_JSON = INVALID
BIG_JSON = "JSON too large"
NO_IMAGE = "no image"
NO_JSON = "no JSON"
NO_TAGS = "no tags field"
TRUNCATED = "truncated or corrupt tar"
UNREADABLE_SIDECAR = "unreadable Parquet sidecar (read the tar instead)"


@dataclass(frozen=True)
class ShardChunk:
    """One img2dataset tar and its Parquet sidecar (None when there is none)."""

    tar: str
    sidecar: str | None


# A sample's members: extension -> (member index, member).
_Members = dict[str, tuple[int, tarfile.TarInfo]]


def expand_inputs(path: str | Path) -> list[Path]:
    """The tars of an img2dataset folder, a single tar, or a brace/glob pattern, sorted."""
    text = str(path)
    if Path(text).is_dir():
        return sorted(Path(text).glob("*.tar"))
    if Path(text).is_file():
        return [Path(text)]
    found = {Path(p) for pattern in braceexpand.braceexpand(text) for p in glob.glob(pattern)}
    return sorted(p for p in found if p.is_file())


class Img2DatasetReader(CorpusReader):
    """img2dataset shards; tags from the JSON/Parquet column ``tags_field``."""

    source = "img2dataset"

    def __init__(self, path: str | Path, tags_field: str = "tags", tags_delimiter: str = ",") -> None:
        if not tags_delimiter:
            raise UserError("the tags delimiter must not be empty (--tags-delimiter)")
        self.path = str(path)
        self.tags_field, self.tags_delimiter = tags_field, tags_delimiter
        self.tars = [str(p) for p in expand_inputs(path)]
        if not self.tars:
            raise UserError(f"no img2dataset tars at {self.path}; pass an img2dataset output folder, "
                            "a .tar file or a pattern such as 'shards/{00000..00099}.tar'")
        self._check_tags_field()

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "input": self.path, "tars": len(self.tars),
                "tags_field": self.tags_field, "tags_delimiter": self.tags_delimiter}

    def chunks(self) -> Iterator[ShardChunk]:
        for tar in self.tars:
            sidecar = Path(tar).with_suffix(".parquet")
            yield ShardChunk(tar, str(sidecar) if sidecar.is_file() else None)

    def read_chunk(self, chunk: ShardChunk, tags_only: bool = False) -> RecordBatch:
        sidecar_problem: list[tuple[int, str]] = []
        columns: list[str] = []
        if chunk.sidecar:
            try:
                columns = pq.ParquetFile(chunk.sidecar).schema_arrow.names
            except (pa.ArrowInvalid, OSError):
                sidecar_problem = [(0, f"{UNREADABLE_SIDECAR} ({Path(chunk.sidecar).name})")]
        if tags_only and {"key", self.tags_field} <= set(columns):
            return self._read_sidecar(chunk.sidecar, columns)
        failed = _failed_rows(pq.read_table(chunk.sidecar, columns=["status"]), chunk.sidecar) \
            if "status" in columns else []
        batch = self._read_tar(chunk.tar, tags_only)
        batch.malformed = sorted(sidecar_problem + failed + batch.malformed)
        return batch

    # ---- the tags column must exist: checked once, on the first shard, for a clear error

    def _check_tags_field(self) -> None:
        first = next(self.chunks())
        if first.sidecar:
            try:
                columns = pq.ParquetFile(first.sidecar).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as err:
                raise UserError(f"cannot read img2dataset sidecar {first.sidecar}: {err}; delete or "
                                "repair it") from None
            where = first.sidecar
        else:
            columns, where = _first_json_fields(first.tar), first.tar
        if columns is not None and self.tags_field not in columns:
            close = difflib.get_close_matches(self.tags_field, columns, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where} has no tags field {self.tags_field!r} (fields: {', '.join(columns)}); "
                            f"pass the right name with --tags-field{hint}")

    # ---- sidecar

    def _read_sidecar(self, sidecar: str, columns: list[str]) -> RecordBatch:
        wanted = ("key", "status", self.tags_field)
        table = pq.read_table(sidecar, columns=[c for c in wanted if c in columns])
        ok = _success_mask(table)
        malformed = _failed_rows(table, sidecar)
        tags, bad_tags = split_tags(table[self.tags_field].combine_chunks(), self.tags_delimiter)
        name = Path(sidecar).name
        malformed += [(int(i), f"{BAD_TAGS} ({name})") for i in np.flatnonzero(bad_tags & ok)]
        keep = pa.array(ok & ~bad_tags)
        keys = table["key"].combine_chunks().cast(pa.string())
        return RecordBatch(keys=keys.filter(keep), tags=tags.filter(keep), malformed=sorted(malformed))

    # ---- tar

    def _read_tar(self, tar: str, tags_only: bool) -> RecordBatch:
        name = Path(tar).name
        keys: list[str] = []
        tags: list[list[str] | None] = []
        images: list[TarMember] = []
        metas: list[dict] = []
        try:
            handle = tarfile.open(tar, "r:")
        except (tarfile.TarError, OSError, EOFError):
            return _empty_batch([(0, f"{TRUNCATED} ({name})")])
        with handle:
            samples, malformed = _scan_members(handle, name)
            for key, members in samples.items():
                reason, row = self._sample_row(handle, members)
                if reason:
                    malformed.append((min(i for i, _ in members.values()), f"{reason} ({name})"))
                    continue
                image = next(members[e][1] for e in IMAGE_SUFFIXES if e in members)
                keys.append(key)
                tags.append(row.pop(self.tags_field))
                images.append(TarMember.of(tar, image))
                metas.append({k: v for k, v in row.items() if k not in BIG_FIELDS})
        tag_lists, _ = split_tags(pa.array(tags, pa.list_(pa.string())), self.tags_delimiter)
        meta = None if tags_only else _meta_table(metas)
        return RecordBatch(keys=pa.array(keys, pa.string()), tags=tag_lists,
                           images=None if tags_only else images, meta=meta, malformed=sorted(malformed))

    def _sample_row(self, handle: tarfile.TarFile, members: _Members) -> tuple[str | None, dict]:
        """(why the sample is skipped, or None; its JSON object with tags as a list)."""
        if not any(e in members for e in IMAGE_SUFFIXES):
            return NO_IMAGE, {}
        if "json" not in members:
            return NO_JSON, {}
        if members["json"][1].size > MAX_JSON_BYTES:
            return BIG_JSON, {}
        try:
            row = parse_json(handle.extractfile(members["json"][1]).read())
        except InvalidJSON as err:
            return err.reason, {}
        except (tarfile.TarError, OSError, EOFError):
            return TRUNCATED, {}
        if not isinstance(row, dict):
            return BAD_JSON, {}
        if row.get("status", "success") != "success":
            return f"status {row['status']!r}", {}
        if self.tags_field not in row:
            return NO_TAGS, {}
        value = tags_value(row[self.tags_field], self.tags_delimiter)
        if value is BAD_VALUE:
            return BAD_TAGS, {}
        row[self.tags_field] = value
        return None, row


def _scan_members(handle: tarfile.TarFile, name: str) -> tuple[dict[str, _Members], list[tuple[int, str]]]:
    """Regular-file members grouped by sample key (:func:`split_member_name`: a name without a
    suffix belongs to no sample), in tar order. A truncated or corrupt tar is counted once, at the
    index of the last member read, and ends the scan; that member's sample is dropped since its
    data may be cut short."""
    samples: dict[str, _Members] = {}
    index, key = 0, None
    try:
        for index, member in enumerate(handle):
            named = split_member_name(member.name) if member.isfile() else None
            if named is not None:
                key, ext = named
                samples.setdefault(key, {}).setdefault(ext, (index, member))
    except (tarfile.TarError, OSError, EOFError):
        samples.pop(key, None)
        return samples, [(index, f"{TRUNCATED} ({name})")]
    return samples, []


def _success_mask(table: pa.Table) -> np.ndarray:
    if "status" not in table.column_names:
        return np.ones(table.num_rows, bool)
    return np.array([s == "success" for s in table["status"].to_pylist()], bool)


def _failed_rows(table: pa.Table, sidecar: str) -> list[tuple[int, str]]:
    """Sidecar rows img2dataset did not download (status other than "success"), by index."""
    if "status" not in table.column_names:
        return []
    name = Path(sidecar).name
    return [(i, f"status {s!r} ({name})") for i, s in enumerate(table["status"].to_pylist())
            if s != "success"]


def _first_json_fields(tar: str) -> list[str] | None:
    """The fields of the first readable sample JSON in ``tar``, or None when there is none."""
    try:
        with tarfile.open(tar, "r:") as handle:
            for member in handle:
                named = split_member_name(member.name) if member.isfile() else None
                if named is not None and named[1] == "json" and member.size <= MAX_JSON_BYTES:
                    try:
                        row = parse_json(handle.extractfile(member).read())
                    except InvalidJSON:
                        continue
                    if isinstance(row, dict):
                        return list(row)
    except (tarfile.TarError, OSError, EOFError):
        pass
    return None


def _meta_table(rows: list[dict]) -> pa.Table:
    names = dict.fromkeys(name for row in rows for name in row)
    # a placeholder column keeps the row count of a table with no metadata columns
    columns = {name: mixed_column([row.get(name) for row in rows]) for name in names} or \
        {"": pa.nulls(len(rows))}
    return pa.table(columns).drop_columns([""]) if not names else pa.table(columns)


def _empty_batch(malformed: list[tuple[int, str]]) -> RecordBatch:
    return RecordBatch(keys=pa.array([], pa.string()), tags=pa.array([], pa.list_(pa.string())),
                       images=[], meta=pa.table({}), malformed=malformed)

