"""Tables as a corpus: JSONL, CSV, TSV (plain, .gz or .bz2) and Parquet.

One row is one image: a key column, a tags column (a list of strings, or one string of tags joined
by a delimiter) and optionally an image column (a file path, relative to the table's folder, or an
http(s) URL). Every other column is metadata.

Parsing is columnar (pyarrow.json / pyarrow.csv / pyarrow.parquet). Text files are cut into blocks
of about ``block_bytes`` at line boundaries, each carrying its first line number, by the chunker the
YFCC100M reader uses too (data/corpus/lines.py): a plain file's blocks are byte ranges that the
worker reads, a compressed file is decompressed once in the parent and its blocks travel with the
chunk. A Parquet file is read one row group per chunk. A JSONL block that pyarrow cannot take whole
(a broken line, a column whose type changes between rows) is re-read line by line so that only the
bad lines are lost; so is a block with a line that may nest deeper than
:data:`data.untrusted_json.MAX_DEPTH` (pyarrow has no depth limit), where such a line is malformed.

Malformed rows are skipped and reported as (number, reason), where the number is the 1-based line
in the text file (the CSV header is line 1) or the 1-based row in a Parquet file. The rules shared
with the YFCC100M reader come first: a line longer than ``max_line_bytes`` (default: the block
size; skipped without ever being held in memory whole, so a lost newline cannot make one block the
size of the file), holding a NUL byte, or not UTF-8 is malformed for that reason, whatever the
parser would say of it. CSV line numbers assume one line per row; a quoted value with a newline in
it can only be read when it does not straddle a block boundary (files under ``block_bytes`` are
always one block).
"""
from __future__ import annotations

import bz2
import csv
import difflib
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from data.corpus.lines import LONG_LINE, LineBlock, damaged_lines, file_pieces, line_blocks, line_ends, read_block
from data.corpus.record import CorpusReader, ImageRef, RecordBatch
from data.errors import UserError
from data.untrusted_json import INVALID, InvalidJSON, may_nest_too_deep, parse_json

FORMATS = ("jsonl", "csv", "tsv", "parquet")
_FORMAT_OF_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
                     ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_OPENERS: dict[str, Callable[[Path], BinaryIO]] = {".gz": gzip.open, ".bz2": bz2.open}
_DELIMITER = {"csv": ",", "tsv": "\t"}
DEFAULT_BLOCK_BYTES = 32 << 20
DEFAULT_IMAGE_FIELD = "image"
_SCHEMA_BYTES = 1 << 20     # how much of a JSONL file is read to learn its columns

# Reasons recorded in RecordBatch.malformed.
MISSING_KEY = "missing key"
BAD_KEY = "key is not a string or integer"
BAD_TAGS = "tags are not a list of strings or a delimited string"
BAD_IMAGE = "image is not a string"
BAD_JSON = INVALID
NOT_OBJECT = "JSON line is not an object"
FIELD_COUNT = "wrong number of fields"
BAD_ROW_GROUP = "unreadable Parquet row group"


def infer_format(path: Path) -> tuple[str, str | None]:
    """(format, compression suffix) from the file name, e.g. 'tags.csv.gz' -> ('csv', '.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in _OPENERS else None
    fmt = _FORMAT_OF_SUFFIX.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UserError(f"cannot tell the table format of {path} from its name; pass the format "
                        f"(one of {', '.join(FORMATS)}), e.g. --source csv")
    return fmt, compression


def column_error(path: Path | str, role: str, name: str, columns: list[str]) -> UserError:
    """The one-line error for a named column that the input lacks, with the closest match."""
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    flag = role.replace("_", "-")
    return UserError(f"{path} has no {role.split('_')[0]} column {name!r} (columns: "
                     f"{', '.join(columns) or 'none'}); pass the right name with --{flag}{hint}")


@dataclass(frozen=True)
class RowGroup:
    """A chunk of a Parquet file (a text file's chunks are :class:`LineBlock` s)."""

    first_line: int                 # the 1-based number of its first row in the file
    row_group: int


# ----------------------------------------------------------------------------------- columns

def split_tags(values: pa.Array, delimiter: str) -> tuple[pa.ListArray, np.ndarray]:
    """Tags as a list<string> column, plus a mask of rows whose tags have the wrong type.

    Strings are split on ``delimiter``; null means no tags; empty and null tags are left out.
    """
    n = len(values)
    if pa.types.is_null(values.type):
        return pa.array([[]] * n, pa.list_(pa.string())), np.zeros(n, bool)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
        # an empty field would split into one empty tag; as null it splits into no list at all
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        lists = pc.split_pattern(values, delimiter)
    elif ((pa.types.is_list(values.type) or pa.types.is_large_list(values.type))
          and (pa.types.is_string(values.type.value_type) or pa.types.is_null(values.type.value_type)
               or pa.types.is_large_string(values.type.value_type))):
        lists = values.cast(pa.list_(pa.string()))
    else:
        return pa.array([[]] * n, pa.list_(pa.string())), np.ones(n, bool)
    return _drop_empty_tags(lists), np.zeros(n, bool)


def _drop_empty_tags(lists: pa.Array) -> pa.ListArray:
    flat = pc.list_flatten(lists)
    if not (flat.null_count or pc.any(pc.equal(flat, "")).as_py()):
        # the usual case, which skips the costly rebuild below
        return pc.fill_null(lists, pa.scalar([], pa.list_(pa.string()))) if lists.null_count else lists
    keep = pc.fill_null(pc.not_equal(flat, ""), False)
    parents = pc.list_parent_indices(lists).to_numpy()
    counts = np.bincount(parents[keep.to_numpy(zero_copy_only=False)], minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))


BAD_VALUE: Any = object()   # tags_value's answer for a value of the wrong type


def tags_value(value: Any, delimiter: str) -> list[str] | None | Any:
    """One row's tags from a JSON value: a list of strings (nulls left out), a delimited string,
    or null (no tags); anything else is ``BAD_VALUE``."""
    if isinstance(value, str):
        return value.split(delimiter)
    if value is None:
        return None
    if isinstance(value, list) and all(t is None or isinstance(t, str) for t in value):
        return [t for t in value if t is not None]
    return BAD_VALUE


def _key_strings(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Keys as strings and a mask of rows whose key is missing (null or empty) or of a wrong type."""
    if pa.types.is_integer(values.type):
        values = values.cast(pa.string())
    elif pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    elif pa.types.is_null(values.type):
        values = pa.nulls(len(values), pa.string())
    elif not pa.types.is_string(values.type):
        return pa.nulls(len(values), pa.string()), np.ones(len(values), bool)
    missing = pc.fill_null(pc.equal(values, ""), True).to_numpy(zero_copy_only=False)
    return values, missing


def image_ref(value: str | None, base: Path) -> ImageRef:
    """A table cell's image reference: an http(s) URL as is, a path relative to ``base``."""
    if not value:
        return None
    if value.startswith(("http://", "https://")):
        return value
    return base / value


# ------------------------------------------------------------------------------------ reader

class TableReader(CorpusReader):
    """A JSONL, CSV, TSV or Parquet table with configurable key, tags and image columns.

    ``image_field`` defaults to ``"image"``, used when the table has it; any other name must
    exist; ``None`` reads no image column.
    """

    source = "table"
    sources = FORMATS

    def __init__(self, path: str | Path, format: str | None = None, key_field: str = "key",
                 tags_field: str = "tags", image_field: str | None = DEFAULT_IMAGE_FIELD,
                 tags_delimiter: str = ",", block_bytes: int = DEFAULT_BLOCK_BYTES,
                 max_line_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"table {self.path} not found; pass an existing JSONL, CSV, TSV or "
                            "Parquet file with --input")
        inferred, self.compression = infer_format(self.path) if format is None else (format, None)
        if format is not None:
            if format not in FORMATS:
                raise UserError(f"unknown table format {format!r}; choose one of {', '.join(FORMATS)}")
            suffix = self.path.suffix.lower()
            self.compression = suffix if suffix in _OPENERS else None
        if inferred == "parquet" and self.compression:
            raise UserError(f"{self.path}: Parquet files are compressed inside; pass the .parquet file "
                            "itself, not a compressed copy")
        if not tags_delimiter:
            raise UserError("the tags delimiter must not be empty (--tags-delimiter)")
        self.format = self.source = inferred
        self.key_field, self.tags_field, self.tags_delimiter = key_field, tags_field, tags_delimiter
        self.block_bytes, self.max_line_bytes = block_bytes, max_line_bytes
        self.image_field = image_field
        self.columns = self._read_columns()
        self.image_field = self._check_columns(image_field)

    # ---- schema

    def _read_columns(self) -> list[str]:
        """Column names from the Parquet schema, the CSV header or the first JSONL block."""
        if self.format == "parquet":
            try:
                return pq.ParquetFile(self.path).schema_arrow.names
            except (pa.ArrowInvalid, OSError) as err:
                raise UserError(f"cannot read Parquet file {self.path}: {err}") from None
        try:
            with self._open() as f:
                head = f.read(_SCHEMA_BYTES)
                rest = f.readline(_SCHEMA_BYTES)
                # whole lines only: a line that does not end within the sample is left out of it
                head = head + rest if rest.endswith(b"\n") or len(rest) < _SCHEMA_BYTES \
                    else head[:head.rfind(b"\n") + 1]
        except (OSError, EOFError) as err:
            raise UserError(f"cannot read {self.path}: {err}") from None
        if not head.strip():
            return []
        if self.format == "jsonl":
            table, _, _ = self._parse_jsonl(_repaired(head), 1)
            if not table.column_names:
                raise UserError(f"{self.path}: no JSON object in its first {_SCHEMA_BYTES >> 20} MiB; "
                                "is it JSON Lines (one object per line)? Otherwise pass --source csv/tsv")
            return table.column_names
        header = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
        return next(csv.reader([header], delimiter=_DELIMITER[self.format]), [])

    def _check_columns(self, image_field: str | None) -> str | None:
        if not self.columns:        # empty file: nothing to check, nothing to read
            return image_field
        for role, name in (("key_field", self.key_field), ("tags_field", self.tags_field)):
            if name not in self.columns:
                raise column_error(self.path, role, name, self.columns)
        if image_field is not None and image_field not in self.columns:
            if image_field != DEFAULT_IMAGE_FIELD:
                raise column_error(self.path, "image_field", image_field, self.columns)
            return None
        return image_field

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "input": str(self.path), "format": self.format,
                "compression": self.compression, "key_field": self.key_field,
                "tags_field": self.tags_field, "image_field": self.image_field,
                "tags_delimiter": self.tags_delimiter}

    # ---- chunks

    def _open(self) -> BinaryIO:
        opener = _OPENERS.get(self.compression or "")
        return opener(self.path) if opener else open(self.path, "rb")

    def chunks(self) -> Iterator[LineBlock | RowGroup]:
        if not self.columns:
            return
        if self.format == "parquet":
            yield from self._row_group_chunks()
        else:
            yield from self._text_chunks()

    def _row_group_chunks(self) -> Iterator[RowGroup]:
        metadata = pq.ParquetFile(self.path).metadata
        first = 1
        for group in range(metadata.num_row_groups):
            yield RowGroup(first_line=first, row_group=group)
            first += metadata.row_group(group).num_rows

    def _text_chunks(self) -> Iterator[LineBlock]:
        """Blocks ending at a newline; the parent counts lines so every block knows its first."""
        with self._open() as f:
            yield from line_blocks(file_pieces(f, self.block_bytes), self.max_line_bytes,
                                   keep_data=bool(self.compression), where=self.path)

    # ---- parsing

    def read_chunk(self, chunk: LineBlock | RowGroup, tags_only: bool = False) -> RecordBatch:
        if self.format == "parquet":
            try:
                table = self._read_row_group(chunk.row_group, tags_only)
            except (pa.ArrowInvalid, OSError):
                # a damaged row group costs its rows, not the run
                return self._to_batch(pa.table({}), np.zeros(0, np.int64),
                                      [(chunk.first_line, BAD_ROW_GROUP)], tags_only)
            return self._to_batch(table, chunk.first_line + np.arange(table.num_rows), [], tags_only)
        if chunk.overlong:
            return self._to_batch(pa.table({}), np.zeros(0, np.int64), [(chunk.first_line, LONG_LINE)], tags_only)
        data, size = read_block(self.path, chunk)
        block = data if isinstance(data, bytes) else bytes(memoryview(data)[:size])
        damaged = {chunk.first_line + i: reason
                   for i, reason in damaged_lines(block, size, line_ends(block, size), self.max_line_bytes).items()}
        if self.format != "jsonl":
            damaged.pop(1, None)  # the CSV header: not a row
        if any(reason != LONG_LINE for reason in damaged.values()):
            block = _repaired(block)
        if self.format == "jsonl":
            table, lines, malformed = self._parse_jsonl(block, chunk.first_line)
        else:
            table, lines, malformed = self._parse_delimited(block, chunk.first_line, tags_only)
        if damaged:  # a damaged line is reported for its damage, whatever the parser made of it
            keep = ~np.isin(lines, list(damaged))
            table, lines = table.filter(pa.array(keep)), lines[keep]
            malformed = [(n, reason) for n, reason in malformed if n not in damaged] + list(damaged.items())
        return self._to_batch(table, lines, malformed, tags_only)

    def _read_row_group(self, group: int, tags_only: bool) -> pa.Table:
        wanted = [self.key_field, self.tags_field] if tags_only else None
        return pq.ParquetFile(self.path).read_row_group(group, columns=wanted)

    def _parse_delimited(self, block: bytes, first_line: int, tags_only: bool
                         ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        """A CSV/TSV block, every column as text; bad rows come back with their line numbers."""
        malformed: list[tuple[int, str]] = []
        skip_header = 1 if first_line == 1 else 0

        def invalid(row: pcsv.InvalidRow) -> str:
            malformed.append((first_line - 1 + row.number, FIELD_COUNT))
            return "skip"

        wanted = [self.key_field, self.tags_field] if tags_only else self.columns
        try:
            table = pcsv.read_csv(
                io.BytesIO(block),
                read_options=pcsv.ReadOptions(column_names=self.columns, skip_rows=skip_header,
                                              use_threads=False, block_size=max(len(block), 1 << 20)),
                parse_options=pcsv.ParseOptions(delimiter=_DELIMITER[self.format], newlines_in_values=True,
                                                ignore_empty_lines=False, invalid_row_handler=invalid),
                convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in self.columns},
                                                    strings_can_be_null=False, include_columns=wanted))
        except pa.ArrowInvalid as err:
            if "Empty CSV file" not in str(err):
                raise
            table = pa.table({c: pa.array([], pa.string()) for c in wanted})
        lines = _surviving_lines(first_line + skip_header, table.num_rows, {n for n, _ in malformed})
        return table, lines, malformed

    def _parse_jsonl(self, block: bytes, first_line: int
                     ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        """A JSONL block, columnar when pyarrow takes it whole, else line by line."""
        if not block.strip():
            return pa.table({}), np.zeros(0, np.int64), []
        if may_nest_too_deep(block):
            # pyarrow's reader has no depth limit (a line nested 100,000 deep crashes the process)
            return self._parse_jsonl_lines(block, first_line)
        try:
            table = pjson.read_json(io.BytesIO(block), read_options=pjson.ReadOptions(
                use_threads=False, block_size=max(len(block), 1 << 20)))
        except pa.ArrowInvalid:
            return self._parse_jsonl_lines(block, first_line)
        return table, _nonblank_lines(block, first_line, table.num_rows), []

    def _parse_jsonl_lines(self, block: bytes, first_line: int
                           ) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        """The slow path for a JSONL block pyarrow refused: each line on its own, so one bad line
        or one row with differently typed tags costs only that row."""
        rows: list[dict] = []
        lines: list[int] = []
        malformed: list[tuple[int, str]] = []
        for number, raw in enumerate(block.split(b"\n"), first_line):
            if not raw.strip():
                continue
            reason, row = self._json_row(raw)
            if reason:
                malformed.append((number, reason))
            else:
                rows.append(row)
                lines.append(number)
        names = dict.fromkeys(name for row in rows for name in row)
        table = pa.table({name: mixed_column([row.get(name) for row in rows]) for name in names}
                         ) if rows else pa.table({})
        for name, kind in ((self.key_field, pa.string()), (self.tags_field, pa.list_(pa.string()))):
            if rows and name in names:
                table = table.set_column(table.column_names.index(name), name,
                                         pa.array([row.get(name) for row in rows], kind))
        return table, np.array(lines, np.int64), malformed

    def _json_row(self, raw: bytes) -> tuple[str | None, dict]:
        """(reason it is malformed or None, the row with key and tags in their column types)."""
        try:
            row = parse_json(raw)
        except InvalidJSON as err:
            return err.reason, {}
        if not isinstance(row, dict):
            return NOT_OBJECT, {}
        key = row.get(self.key_field)
        if isinstance(key, int) and not isinstance(key, bool):
            key = row[self.key_field] = str(key)
        if not (key is None or isinstance(key, str)):
            return BAD_KEY, {}
        tags = tags_value(row.get(self.tags_field), self.tags_delimiter)
        if tags is BAD_VALUE:
            return BAD_TAGS, {}
        row[self.tags_field] = tags
        image = row.get(self.image_field) if self.image_field else None
        if not (image is None or isinstance(image, str)):
            return BAD_IMAGE, {}
        return None, row

    def _to_batch(self, table: pa.Table, lines: np.ndarray, malformed: list[tuple[int, str]],
                  tags_only: bool) -> RecordBatch:
        """Validate the key/tags/image columns, drop bad rows, keep the rest as metadata."""
        n = table.num_rows
        names = table.column_names
        keys, bad_key = _key_strings(table[self.key_field].combine_chunks() if self.key_field in names
                                     else pa.nulls(n))
        tags, bad_tags = split_tags(table[self.tags_field].combine_chunks() if self.tags_field in names
                                    else pa.nulls(n), self.tags_delimiter)
        bad_image = np.zeros(n, bool)
        image_values: list[Any] = [None] * n
        if not tags_only and self.image_field and self.image_field in names:
            image_values = table[self.image_field].to_pylist()
            bad_image = np.array([v is not None and not isinstance(v, str) for v in image_values], bool)
        bad_type = _key_type_rows(table, self.key_field)
        reasons = [(bad_type, BAD_KEY), (bad_key & ~bad_type, MISSING_KEY), (bad_tags, BAD_TAGS),
                   (bad_image, BAD_IMAGE)]
        bad = np.zeros(n, bool)
        for mask, reason in reasons:
            mask = mask & ~bad
            malformed += [(int(line), reason) for line in lines[mask]]
            bad |= mask
        keep = pa.array(~bad)
        base = self.path.parent
        images = None if tags_only else [image_ref(v, base) for v, b in zip(image_values, bad) if not b]
        meta = None
        if not tags_only:
            meta = table.drop_columns([c for c in (self.key_field, self.tags_field, self.image_field)
                                       if c in names]).filter(keep)
        return RecordBatch(keys=keys.filter(keep), tags=tags.filter(keep), images=images, meta=meta,
                           malformed=sorted(malformed))


def _key_type_rows(table: pa.Table, key_field: str) -> np.ndarray:
    """Rows whose key column has a type no key can have (only possible for whole columns)."""
    if key_field not in table.column_names:
        return np.zeros(table.num_rows, bool)
    kind = table.schema.field(key_field).type
    ok = (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
          or pa.types.is_null(kind))
    return np.full(table.num_rows, not ok)


def _nonblank_lines(block: bytes, first_line: int, rows: int) -> np.ndarray:
    """Line numbers of a JSONL block's rows; blank lines hold no row."""
    if block.count(b"\n") + (not block.endswith(b"\n")) == rows:    # no blank lines: the usual case
        return first_line + np.arange(rows)
    return first_line + np.array([i for i, line in enumerate(block.split(b"\n")) if line.strip()],
                                 np.int64)


def _surviving_lines(first: int, rows: int, skipped: set[int]) -> np.ndarray:
    """Line numbers of the rows left after skipping ``skipped`` lines (one line per row)."""
    lines = np.arange(first, first + rows + len(skipped))
    if skipped:
        lines = lines[~np.isin(lines, np.fromiter(skipped, np.int64))]
    return lines[:rows]


def _repaired(block: bytes) -> bytes:
    """``block`` with invalid UTF-8 replaced and NUL bytes made spaces, so that pyarrow takes it
    whole; the lines that held them are dropped after parsing (line numbering is unchanged)."""
    return block.decode("utf-8", "replace").encode("utf-8").replace(b"\x00", b" ")


def mixed_column(values: list[Any]) -> pa.Array:
    """A metadata column pyarrow cannot type as one: strings kept, other values as JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                        pa.string())
