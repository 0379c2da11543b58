"""Blocks of whole lines, and the rules that make a line malformed, for every text corpus reader.

The YFCC100M reader (data/corpus/yfcc.py) and the table reader (data/corpus/table.py: CSV, TSV,
JSONL) read text the same way; only the tokenizer that runs over a block differs.

**Cutting.** :func:`line_blocks` cuts a stream of pieces (reads of ``piece_bytes`` from a plain
file, or decompressed output) into :class:`LineBlock` s that end at a newline and carry their first
1-based line number, so that a block parsed in a worker process still reports lines by their
number in the file. A block of a plain file is only a byte range (the worker reads it itself, with
:func:`read_block`); a block of a compressed stream carries its bytes. A line longer than
``max_line_bytes`` that runs past the end of a piece becomes a block of its own marked
``overlong``, and is dropped piece by piece: it is never held in memory whole, so a lost newline
or a binary file costs at most a piece's memory, whatever its length.

**Checking.** :func:`damaged_lines` names the lines of a block that break a rule, whatever the
format, before its parser sees them. The rules, in order of precedence when a line breaks several:

1. ``line too long``: more than ``max_line_bytes`` bytes, the newline left out;
2. ``NUL byte``: no text corpus holds one on purpose (a torn write, a binary file);
3. ``invalid UTF-8``: Arrow validates a whole block at once, and only a block that fails is checked
   line by line.

A reader reports each such line once, with that reason, even when its format would reject it too.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import pyarrow as pa

from data.errors import UserError

LONG_LINE = "line too long"
NUL_BYTE = "NUL byte"
BAD_UTF8 = "invalid UTF-8"

NEWLINE = 10
_scratch = threading.local()


@dataclass(frozen=True)
class LineBlock:
    """Whole lines of a text input: a byte range of a plain file, or bytes of a decompressed one.

    ``overlong`` marks one line longer than the limit: reported by its number, never read."""

    first_line: int
    offset: int = 0
    length: int = 0
    data: bytes | None = None
    overlong: bool = False


def file_pieces(f: BinaryIO, piece_bytes: int) -> Iterator[bytearray]:
    """Successive reads of ``piece_bytes`` (the last may be shorter) into one reused buffer: each
    piece is valid until the next is read."""
    buffer = bytearray(piece_bytes)
    view = memoryview(buffer)
    while True:
        size = 0
        while size < piece_bytes and (got := f.readinto(view[size:])):
            size += got
        if size == 0:
            return
        yield buffer if size == piece_bytes else buffer[:size]
        if size < piece_bytes:
            return


def line_blocks(pieces: Iterable[bytes | bytearray], max_line_bytes: int, *, keep_data: bool,
                where: str | os.PathLike) -> Iterator[LineBlock]:
    """Blocks of whole lines, in order, from consecutive pieces of a text input.

    Each piece's lines up to its last newline close a block (with the unfinished line carried in
    from the pieces before); the bytes after that newline begin the next one. With ``keep_data``
    a block holds its bytes (a decompressed stream), otherwise only its byte range (a plain file,
    which the worker reads itself). A read error of the input (a damaged compressed file) is a
    :class:`UserError` naming ``where`` and the line reached."""
    line = 1
    start = 0          # offset of the first byte not yet in a block
    pos = 0            # offset just past the pieces read so far
    carry = b""        # with keep_data: the bytes [start, pos), the beginning of one line
    skipping = False   # inside a line over max_line_bytes: dropped up to its newline
    pieces = iter(pieces)
    while True:
        try:
            piece = next(pieces, None)
        except (OSError, EOFError) as err:
            raise UserError(f"{where}: cannot read past line {line}: {err}; the compressed file is "
                            "damaged, re-download or re-compress it") from None
        if piece is None:
            break
        size, at = len(piece), 0  # ``at``: the first byte of the piece not yet in a block
        if skipping:
            cut = piece.find(b"\n")
            if cut < 0:
                pos += size
                continue
            yield LineBlock(line, start, pos + cut + 1 - start, overlong=True)
            line, at, skipping = line + 1, cut + 1, False
            start = pos + at
        head = piece.find(b"\n", at)  # the end of the line carried in from earlier pieces
        if pos + (head if head >= 0 else size) - start > max_line_bytes:
            carry = b""
            if head < 0:
                skipping = True
                pos += size
                continue
            yield LineBlock(line, start, pos + head + 1 - start, overlong=True)
            line, at = line + 1, head + 1
            start = pos + at
        last = piece.rfind(b"\n", at)
        if last >= 0:
            data = carry + memoryview(piece)[at:last + 1] if keep_data else None
            yield LineBlock(line, start, pos + last + 1 - start, data)
            line += count_newlines(piece, at, last + 1)
            start = pos + last + 1
            carry = bytes(memoryview(piece)[last + 1:]) if keep_data else b""
        elif keep_data:
            carry += memoryview(piece)[at:]
        pos += size
    if skipping:
        yield LineBlock(line, start, pos - start, overlong=True)
    elif pos > start:
        yield LineBlock(line, start, pos - start, carry if keep_data else None)


def read_block(path: str | os.PathLike, block: LineBlock) -> tuple[bytes | bytearray, int]:
    """A block's bytes (maybe at the start of a larger buffer, reused by the next call in this
    thread) and their length, always ending in a newline."""
    if block.data is not None:
        data = block.data if block.data.endswith(b"\n") else block.data + b"\n"
        return data, len(data)
    data = scratch_bytes(block.length + 1)
    with open(path, "rb") as f:
        f.seek(block.offset)
        size = f.readinto(memoryview(data)[:block.length])
    if size != block.length:
        raise UserError(f"{path} changed while it was being read (expected {block.length} bytes at "
                        f"offset {block.offset}, got {size}); do not modify it during a run")
    if data[size - 1] != NEWLINE:  # the file's last line has no newline
        data[size] = NEWLINE
        size += 1
    return data, size


def line_ends(data: bytes | bytearray, size: int) -> np.ndarray:
    """Positions of the newlines of ``data[:size]``, one per line."""
    buf = np.frombuffer(data, dtype=np.uint8, count=size)
    return np.flatnonzero(np.equal(buf, NEWLINE, out=scratch_mask(size)))


def damaged_lines(data: bytes | bytearray, size: int, ends: np.ndarray, max_line_bytes: int) -> dict[int, str]:
    """Lines of ``data[:size]`` (whole lines; ``ends`` holds their newlines' positions) that break
    a rule of the module docstring, by index in the block, with the reason that takes precedence."""
    reasons = {i: BAD_UTF8 for i in _invalid_utf8_lines(data, size, ends)}
    if data.find(b"\x00", 0, size) >= 0:
        nul = np.flatnonzero(np.frombuffer(data, dtype=np.uint8, count=size) == 0)
        reasons.update((int(i), NUL_BYTE) for i in np.unique(np.searchsorted(ends, nul)))
    lengths = np.diff(ends, prepend=-1) - 1  # the newline left out
    reasons.update((int(i), LONG_LINE) for i in np.flatnonzero(lengths > max_line_bytes))
    return reasons


def _invalid_utf8_lines(data: bytes | bytearray, size: int, ends: np.ndarray) -> list[int]:
    """Indices of lines of ``data[:size]`` that are not valid UTF-8. Arrow checks the whole block
    at once (several times faster than ``bytes.decode`` and allocating nothing)."""
    whole = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(np.array([0, size], np.int32)),
                                                    pa.py_buffer(data)])
    try:
        whole.validate(full=True)
        return []
    except pa.ArrowInvalid:
        pass
    bad = []
    start = 0
    for i, end in enumerate(ends.tolist()):
        try:
            data[start:end].decode("utf-8")
        except UnicodeDecodeError:
            bad.append(i)
        start = end + 1
    return bad


def count_newlines(data: bytes | bytearray, start: int, end: int) -> int:
    view = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
    return int(np.count_nonzero(np.equal(view, NEWLINE, out=scratch_mask(end - start))))


def scratch_bytes(size: int) -> bytearray:
    """A per-thread buffer of at least ``size`` bytes, reused across blocks: a fresh 16 MiB
    allocation per block costs thousands of page faults."""
    buffer = getattr(_scratch, "bytes", None)
    if buffer is None or len(buffer) < size:
        buffer = _scratch.bytes = bytearray(size + (size >> 3))
    return buffer


def scratch_mask(size: int) -> np.ndarray:
    """A per-thread boolean array of ``size``, reused across blocks."""
    mask = getattr(_scratch, "mask", None)
    if mask is None or len(mask) < size:
        mask = _scratch.mask = np.empty(size + (size >> 3), dtype=bool)
    return mask[:size]
