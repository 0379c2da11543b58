"""YFCC100M metadata reader: ``yfcc100m_dataset`` TSV, plain or .bz2, either column layout.

Layouts (no header, tab separated, one photo per line):

* ``"23"`` — the original Webscope file: photo_id, user_nsid, user_nickname, date_taken,
  date_uploaded, capture_device, title, description, user_tags, machine_tags, longitude, latitude,
  accuracy, page_url, download_url, license_name, license_url, server_id, farm_id, secret,
  secret_original, extension, marker (0 photo, 1 video).
* ``"25"`` — the public mirror's file: line_number, photo_id, hash, then the 22 columns after
  photo_id above. The hash column is kept in ``meta`` exactly as written (some converters wrote the
  md5 bytes as unpadded hex, so it is not always the 32-digit md5 of the download URL).
* ``"auto"`` — decided from the tab count of the first lines.

Reading is columnar, not a Python loop per line. The input is cut into blocks of whole lines
that carry their first line number, and lines that are too long, hold a NUL byte or are not UTF-8
are malformed, by the rules every text reader shares (data/corpus/lines.py; the line limit here is
``max_line_bytes``, 1 MiB by default: real rows are a few kilobytes). This module's own part is the
tokenizer: a block is parsed with numpy over its bytes, where one scan finds every tab and newline,
which gives per line the column count (a wrong one is malformed too) and every field's byte span.
Wanted columns are gathered by an Arrow ``take`` over a zero-copy view of the block's fields, and
the tag fields are split on ',' with numpy into a list array, so that the counter
(data/vocab/counting.py) works per distinct raw tag, never per occurrence in Python. It stays
apart from pyarrow.csv, which the table reader uses, because it is faster on these rows
(scripts/bench/vocab.py measures both on the same file).

Compressed input: ``.bz2`` is decompressed by an external ``lbzip2``/``pbzip2``/``bzip2 -dc``
process when one is on PATH (lbzip2 and pbzip2 decompress on several cores; even plain bzip2
runs concurrently with parsing), otherwise by Python's ``bz2`` module in a background thread
(the decompressor releases the GIL), pipelined with parsing through a small bounded queue.
Plain files are never shipped between processes: a block names a byte range and the worker
reads it itself.

User tags are comma separated and URL-encoded with '+' for spaces; :meth:`YfccReader.decode_tag`
is ``urllib.parse.unquote_plus``. Videos (marker 1) are skipped unless ``include_videos``; a
licence filter keeps rows whose licence family is in ``licenses`` (see :data:`LICENSE_FAMILIES`).
Both kinds of skipped rows are counted, separately from malformed ones.
"""
from __future__ import annotations

import bz2
import functools
import os
import queue
import shutil
import subprocess
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.corpus.lines import (LONG_LINE, NEWLINE, LineBlock, damaged_lines, file_pieces, line_blocks,
                               read_block, scratch_mask)
from data.corpus.record import URL_PLUS, CorpusReader, RecordBatch
from data.errors import UserError

COLUMNS_23 = (
    "photo_id", "user_nsid", "user_nickname", "date_taken", "date_uploaded", "capture_device",
    "title", "description", "user_tags", "machine_tags", "longitude", "latitude", "accuracy",
    "page_url", "download_url", "license_name", "license_url", "server_id", "farm_id", "secret",
    "secret_original", "extension", "marker",
)
COLUMNS_25 = ("line_number", "photo_id", "hash") + COLUMNS_23[1:]
LAYOUTS = {"23": COLUMNS_23, "25": COLUMNS_25}

# Licence families, keyed by the path of the licence URL (creativecommons.org/licenses/<code>/...,
# creativecommons.org/publicdomain/{zero,mark}/..., flickr.com/commons/usage/) and, when the URL is
# missing or unknown, by YFCC100M's licence name.
LICENSE_FAMILIES = {
    "by": "Attribution License",
    "by-sa": "Attribution-ShareAlike License",
    "by-nd": "Attribution-NoDerivs License",
    "by-nc": "Attribution-NonCommercial License",
    "by-nc-sa": "Attribution-NonCommercial-ShareAlike License",
    "by-nc-nd": "Attribution-NonCommercial-NoDerivs License",
    "cc0": "Public Domain Dedication (CC0)",
    "pdm": "Public Domain Mark",
    "nkcr": "No known copyright restrictions",
}
# Shorthands accepted by ``licenses``: families that allow commercial use, and the CC BY family.
LICENSE_PRESETS = {
    "commercial": frozenset({"by", "by-sa", "by-nd", "cc0", "pdm", "nkcr"}),
    "cc-by-family": frozenset({"by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd"}),
}
_FAMILY_OF_NAME = {name.casefold(): family for family, name in LICENSE_FAMILIES.items()}

DEFAULT_BLOCK_SIZE = 16 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 20
_HEAD_BYTES = 1 << 20
_HEAD_LINES = 100
_DECOMPRESSORS = ("lbzip2", "pbzip2", "bzip2")

MALFORMED_COLUMNS = "wrong column count"
SKIPPED_VIDEO = "video"
SKIPPED_LICENSE = "license"

_TAB, _CR, _COMMA = 9, 13, 44
_NUMBER = r"^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$"


def license_family(url: str, name: str = "") -> str | None:
    """The family code ('by', 'by-nc-sa', 'cc0', ...) of a row's licence URL or name, or None."""
    parts = [p for p in urllib.parse.urlsplit(url.strip()).path.lower().split("/") if p]
    if len(parts) >= 2 and parts[0] == "licenses" and parts[1] in LICENSE_FAMILIES:
        return parts[1]
    if len(parts) >= 2 and parts[0] == "publicdomain":
        return {"zero": "cc0", "mark": "pdm"}.get(parts[1])
    if parts[:2] == ["commons", "usage"]:
        return "nkcr"
    return _FAMILY_OF_NAME.get(name.strip().casefold())


def format_line(values: Mapping[str, object], layout: str = "23") -> str:
    """One metadata line (newline included) from column values, absent columns left empty: the
    writer of the format this module reads, for synthetic corpora, tests and benchmarks."""
    columns = LAYOUTS[layout]
    unknown = sorted(set(values) - set(columns))
    if unknown:
        raise ValueError(f"not a column of the {layout}-column layout: {', '.join(unknown)}")
    cells = [str(values.get(column, "")) for column in columns]
    if any("\t" in cell or "\n" in cell for cell in cells):
        raise ValueError("YFCC100M cells cannot contain tabs or newlines (URL-encode them)")
    return "\t".join(cells) + "\n"


def encode_tags(tags: Iterable[str]) -> str:
    """The user_tags cell of ``tags`` for :func:`format_line`: URL-encoded with '+' for spaces
    (the inverse of :meth:`YfccReader.decode_tag`), comma separated."""
    return ",".join(urllib.parse.quote_plus(tag) for tag in tags)


def parse_licenses(spec: str | Iterable[str] | None) -> frozenset[str] | None:
    """Family codes and presets ("by,by-sa", "commercial", ...) -> a set of family codes."""
    if spec is None:
        return None
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    families: set[str] = set()
    for name in (n.strip().lower() for n in names):
        if name in LICENSE_PRESETS:
            families |= LICENSE_PRESETS[name]
        elif name in LICENSE_FAMILIES:
            families.add(name)
        elif name:
            valid = ", ".join([*LICENSE_FAMILIES, *LICENSE_PRESETS])
            raise UserError(f"unknown licence family {name!r} in --licenses; use any of: {valid}")
    if not families:
        raise UserError("--licenses is empty; name at least one licence family (e.g. by,by-sa)")
    return frozenset(families)


@dataclass
class _Block:
    """Field geometry of the kept lines of one block.

    ``delims`` holds the positions of every tab and newline of the block after a sentinel -1.
    Field k of the block (counting fields of all lines in order) is ``buf[delims[k] + 1 :
    delims[k + 1]]``; with ``prev[i]``, the index in ``delims`` of the newline before line i (0
    for the sentinel), column j of line i is field ``prev[i] + j``.
    """

    buf: np.ndarray
    delims: np.ndarray
    prev: np.ndarray
    columns: int
    crlf: bool = False

    def __len__(self) -> int:
        return len(self.prev)

    def select(self, keep: np.ndarray) -> "_Block":
        return _Block(self.buf, self.delims, self.prev[keep], self.columns, self.crlf)

    def fields(self, column: int | list[int]) -> pa.BinaryArray:
        """The given column(s) of every line, each value still followed by its delimiter; with
        several columns the values run line by line."""
        columns = np.atleast_1d(column)
        index = (self.prev[:, None] + columns[None, :]).ravel()
        return self._every_field.take(pa.array(index))

    @functools.cached_property
    def _every_field(self) -> pa.BinaryArray:
        # Every field with its trailing delimiter is one value of a zero-copy Arrow array over the
        # block (offsets = delimiter positions + 1); ``take`` gathers the wanted ones in C++.
        offsets = (self.delims + 1).astype(np.int32)
        return pa.Array.from_buffers(pa.binary(), len(offsets) - 1,
                                     [None, pa.py_buffer(offsets), pa.py_buffer(self.buf)])

    def last_field_is(self, value: bytes) -> np.ndarray:
        """Per line: is the last column exactly ``value`` (a single byte)?"""
        start = self.delims[self.prev + self.columns - 1] + 1
        end = self.delims[self.prev + self.columns]
        end = end - (self.buf[end - 1] == _CR)
        return (end - start == 1) & (self.buf[start] == value[0])

    def text(self, column: int) -> pa.StringArray:
        """One column as strings (the block is valid UTF-8 once malformed lines are out)."""
        values = pc.binary_slice(self.fields(column), 0, -1).view(pa.string())
        if self.crlf and column == self.columns - 1:
            values = pc.utf8_rtrim(values, characters="\r")
        return values


class YfccReader(CorpusReader):
    """Reads ``yfcc100m_dataset`` (23- or 25-column layout, plain or .bz2) as record batches."""

    source = "yfcc100m"
    tag_encoding = URL_PLUS

    def __init__(self, path: str | os.PathLike, layout: str = "auto", machine_tags: bool = False,
                 include_videos: bool = False, licenses: str | Iterable[str] | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"YFCC100M input {self.path} not found; pass the path of yfcc100m_dataset "
                            "(plain or .bz2)")
        if layout not in ("auto", *LAYOUTS):
            raise UserError(f"unknown YFCC100M layout {layout!r}; use auto, 23 or 25")
        if block_size < 1 or max_line_bytes < 1:
            raise UserError(f"block size and line limit must be positive, got {block_size} and {max_line_bytes}")
        self.compressed = self.path.suffix == ".bz2"
        self.machine_tags = machine_tags
        self.include_videos = include_videos
        self.licenses = parse_licenses(licenses)
        self.block_size = block_size
        self.max_line_bytes = max_line_bytes
        self.layout = self._detect_layout() if layout == "auto" else layout
        self.columns = LAYOUTS[self.layout]
        self.skipped: Counter[str] = Counter()  # rows skipped by read_chunk in this process

    # -- the input stream ------------------------------------------------------------------------

    def _open_head(self) -> bytes:
        opener = bz2.open if self.compressed else open
        try:
            with opener(self.path, "rb") as f:
                return f.read(_HEAD_BYTES)
        except (OSError, EOFError) as err:
            raise UserError(f"cannot read {self.path}: {err}; check that it is a complete "
                            f"{'bzip2 file' if self.compressed else 'file'}") from None

    def _detect_layout(self) -> str:
        lines = self._open_head().split(b"\n")[:_HEAD_LINES]
        votes = Counter(len(line.split(b"\t")) for line in lines if line)
        candidates = {str(n): votes[n] for n in (23, 25) if votes[n]}
        if not votes:
            return "23"  # empty file: nothing to parse, any layout will do
        if not candidates:
            seen = ", ".join(str(n) for n, _ in votes.most_common(3))
            raise UserError(f"{self.path} does not look like YFCC100M metadata: its first lines have "
                            f"{seen} tab-separated columns, expected 23 (Webscope) or 25 (mirror); "
                            "check the file or pass --layout")
        return max(candidates, key=candidates.get)

    def _stream(self) -> Iterator[bytes]:
        """Decompressed bytes of a .bz2 input in pieces of about ``block_size``."""
        tool = next((t for t in map(shutil.which, _DECOMPRESSORS) if t), None)
        if tool is not None:
            yield from self._stream_process(tool)
        else:
            yield from self._stream_thread()

    def _stream_process(self, tool: str) -> Iterator[bytes]:
        proc = subprocess.Popen([tool, "-dc", "--", str(self.path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)
        try:
            while piece := _read_full(proc.stdout, self.block_size):
                yield piece
            stderr = proc.stderr.read().decode("utf-8", "replace").strip()
            if proc.wait() != 0:
                why = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
                raise UserError(f"{self.path}: {Path(tool).name} failed ({why}); the file is truncated "
                                "or corrupt, download it again")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def _stream_thread(self) -> Iterator[bytes]:
        pieces: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()

        def produce() -> None:
            try:
                with bz2.open(self.path, "rb") as f:
                    while not stop.is_set() and (piece := f.read(self.block_size)):
                        pieces.put(piece)
                pieces.put(None)
            except (OSError, EOFError) as err:
                pieces.put(err)

        thread = threading.Thread(target=produce, daemon=True, name="bz2-decompress")
        thread.start()
        try:
            while (piece := pieces.get()) is not None:
                if isinstance(piece, Exception):
                    raise UserError(f"{self.path}: {piece}; the file is truncated or corrupt, "
                                    "download it again")
                yield piece
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    pieces.get_nowait()
                except queue.Empty:
                    thread.join(0.05)

    # -- chunks ------------------------------------------------------------------------------------

    def chunks(self) -> Iterator[LineBlock]:
        """Blocks of whole lines in file order, each with its first 1-based line number."""
        if self.compressed:
            yield from line_blocks(self._stream(), self.max_line_bytes, keep_data=True, where=self.path)
            return
        with open(self.path, "rb") as f:
            yield from line_blocks(file_pieces(f, self.block_size), self.max_line_bytes, keep_data=False,
                                   where=self.path)

    def decode_tag(self, raw: str) -> str:
        return urllib.parse.unquote_plus(raw)

    def read_chunk(self, chunk: LineBlock, tags_only: bool = False) -> RecordBatch:
        if chunk.overlong:
            return _overlong_batch(chunk.first_line, tags_only)
        data, size = read_block(self.path, chunk)
        block, malformed = _split_lines(data, size, chunk.first_line, len(self.columns), self.max_line_bytes)
        block, skipped = self._filter(block)
        self.skipped.update(skipped)
        tag_columns = ["user_tags", "machine_tags"] if self.machine_tags else ["user_tags"]
        tags = _split_tags(block, [self.columns.index(c) for c in tag_columns])
        keys = self._text(block, "photo_id")
        if tags_only:
            return RecordBatch(keys=keys, tags=tags, malformed=malformed, skipped=skipped)
        meta = self._meta(block)
        return RecordBatch(keys=keys, tags=tags, images=meta.column("download_url").to_pylist(),
                         meta=meta, malformed=malformed, skipped=skipped)

    def _text(self, block: _Block, column: str) -> pa.StringArray:
        return block.text(self.columns.index(column))

    def _filter(self, block: _Block) -> tuple[_Block, dict[str, int]]:
        """Drop videos and rows outside the licence filter, counting each."""
        keep = np.ones(len(block), dtype=bool)
        skipped: dict[str, int] = {}
        if not self.include_videos:
            video = block.last_field_is(b"1")
            keep &= ~video
            skipped[SKIPPED_VIDEO] = int(video.sum())
        if self.licenses is not None:
            allowed = self._license_allowed(block.select(keep))
            skipped[SKIPPED_LICENSE] = int((~allowed).sum())
            keep[np.flatnonzero(keep)[~allowed]] = False
        return block.select(keep), {k: v for k, v in skipped.items() if v}

    def _license_allowed(self, block: _Block) -> np.ndarray:
        # A corpus has a handful of distinct licences: decide per distinct (url, name) pair.
        pairs = pc.binary_join_element_wise(self._text(block, "license_url"),
                                            self._text(block, "license_name"), "\t").dictionary_encode()
        allowed = np.array([license_family(*pair.split("\t", 1)) in self.licenses
                            for pair in pairs.dictionary.to_pylist()], dtype=bool)
        return allowed[pairs.indices.to_numpy(zero_copy_only=False)] if len(allowed) else np.zeros(0, bool)

    def _meta(self, block: _Block) -> pa.Table:
        text = functools.partial(self._text, block)
        title = [urllib.parse.unquote_plus(t) for t in text("title").to_pylist()]
        columns = {"photo_id": text("photo_id")}
        if "hash" in self.columns:
            columns["hash"] = text("hash")
        columns.update({
            "user_nsid": text("user_nsid"), "title": pa.array(title, pa.string()),
            "date_taken": text("date_taken"), "license_name": text("license_name"),
            "license_url": text("license_url"), "download_url": text("download_url"),
            "page_url": text("page_url"), "extension": text("extension"),
            "marker": _number(text("marker"), pa.int8()),
            "longitude": _number(text("longitude"), pa.float64()),
            "latitude": _number(text("latitude"), pa.float64()),
        })
        return pa.table(columns)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source, "input": str(self.path), "layout": self.layout,
            "machine_tags": self.machine_tags, "include_videos": self.include_videos,
            "licenses": sorted(self.licenses) if self.licenses is not None else None,
        }


def _number(values: pa.StringArray, type_: pa.DataType) -> pa.Array:
    """Numeric column; empty or non-numeric text (a damaged row) becomes null, never an error."""
    numeric = pc.match_substring_regex(values, _NUMBER)
    return pc.if_else(numeric, values, pa.scalar(None, pa.string())).cast(type_)


def _overlong_batch(line: int, tags_only: bool) -> RecordBatch:
    return RecordBatch(keys=pa.array([], pa.string()), tags=pa.array([], pa.list_(pa.string())),
                       images=None if tags_only else [], meta=None if tags_only else pa.table({}),
                       malformed=[(line, LONG_LINE)])


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes from a pipe (a single read may return less before the end)."""
    parts, have = [], 0
    while have < size and (part := stream.read(size - have)):
        parts.append(part)
        have += len(part)
    return b"".join(parts)


def _split_lines(data: bytes | bytearray, size: int, first_line: int, columns: int,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> tuple[_Block, list[tuple[int, str]]]:
    """Field geometry of ``data[:size]`` (whole lines), minus its malformed lines (reported)."""
    buf = np.frombuffer(data, dtype=np.uint8, count=size)
    # One scan for bytes <= '\n' finds tabs and newlines together (the rare other control bytes
    # that it also catches are dropped after).
    found = np.flatnonzero(np.less_equal(buf, NEWLINE, out=scratch_mask(size)))
    kind = buf[found]
    if len(kind) and kind.min() < _TAB:
        found = found[kind >= _TAB]
        kind = buf[found]
    delims = np.empty(len(found) + 1, dtype=np.int64)
    delims[0] = -1
    delims[1:] = found
    line_end = np.flatnonzero(kind == NEWLINE) + 1  # index in delims of each line's newline
    prev = np.empty_like(line_end)
    prev[:1] = 0
    prev[1:] = line_end[:-1]
    bad = line_end - prev != columns
    reasons = {int(i): MALFORMED_COLUMNS for i in np.flatnonzero(bad)}
    reasons.update(damaged_lines(data, size, delims[line_end], max_line_bytes))  # they take precedence
    if reasons:
        bad[list(reasons)] = True
    block = _Block(buf, delims, prev[~bad], columns, crlf=data.find(b"\r", 0, size) >= 0)
    return block, [(first_line + i, reason) for i, reason in sorted(reasons.items())]


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Arrow offsets (int32, length n + 1) of consecutive values with the given lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _split_tags(block: _Block, columns: list[int]) -> pa.ListArray:
    """Comma-separated columns (one or more per line) -> a list array of their non-empty items."""
    fields = block.fields(columns)
    offsets = np.frombuffer(fields.buffers()[1], dtype=np.int32, count=len(fields) + 1, offset=fields.offset * 4)
    text = np.frombuffer(fields.buffers()[2], dtype=np.uint8, count=int(offsets[-1]))[offsets[0]:]
    offsets = offsets - offsets[0]
    # Items end at a comma or at a field's trailing delimiter; counting the latter before an item
    # gives the field it is in.
    sep = text == _COMMA
    sep[offsets[1:] - 1] = True
    ends = np.flatnonzero(sep)
    field_end = text[ends] != _COMMA
    field_of_item = np.cumsum(field_end) - field_end
    lengths = np.diff(ends, prepend=-1) - 1
    nonempty = lengths > 0
    values = pa.StringArray.from_buffers(int(nonempty.sum()), pa.py_buffer(_offsets(lengths[nonempty])),
                                         pa.py_buffer(text[~sep]))
    line_of_item = field_of_item[nonempty] // len(columns)
    list_offsets = _offsets(np.bincount(line_of_item, minlength=len(block)))
    return pa.ListArray.from_arrays(pa.array(list_offsets), values)
