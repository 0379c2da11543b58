"""Decode only the rows of a baseline JPEG that a crop needs (libjpeg-turbo through simplejpeg).

A random resized crop keeps, on average, well under half of a stored image, yet a JPEG decoder
decodes the whole frame. A baseline (sequential) JPEG is coded top to bottom, one row of MCUs after
another, so the rows below a crop can be left coded: :func:`decode_rows` rewrites the frame height
in the SOF header to the crop's bottom (rounded up to whole MCU rows, plus one more so that chroma
upsampling sees the same neighbours as in a full decode) and libjpeg-turbo stops there. The rows it
returns are the pixels a full decode gives, bit for bit (tests/data/images/test_jpeg_rows.py
checks this against Pillow's decode of the untouched bytes); the coded rows below are skipped as
bytes, not decoded. Optionally the frame is decoded at a reduced DCT scale (1/2, 1/4, 1/8: the
scales libjpeg-turbo has SIMD code for, as Pillow's ``draft``).

This is a fast path, never a second guard: callers open the bytes with
:func:`data.images.decode.open_untrusted` first (format allowlist, pixel and memory limits), and
:func:`decode_rows` returns ``None`` for anything it does not handle exactly (progressive or
arithmetic-coded frames, CMYK or grayscale, a stream that does not end in an EOI marker, which is
how a truncated file looks, a decoder error), so the caller falls back to Pillow, whose
handling of damaged files (the counted skips) is unchanged.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import simplejpeg

#: baseline and extended sequential Huffman frames: coded top to bottom in one scan per component
#: set, so a shorter frame height decodes the same top rows
SEQUENTIAL_SOF = (0xC0, 0xC1)
#: every other start-of-frame marker (progressive, lossless, arithmetic, hierarchical)
OTHER_SOF = (0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
#: reduced DCT scales used, as eighths (libjpeg-turbo's SIMD IDCTs; 7/8, 3/4, ... are plain C)
SCALES = (8, 4, 2, 1)
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class Frame:
    """What :func:`decode_rows` needs of a sequential JPEG's SOF segment."""
    height_offset: int  # byte offset of the 2-byte frame height
    width: int
    height: int
    mcu_rows: int  # pixel rows per MCU row: 8 x the largest vertical sampling factor


def sequential_frame(data: bytes) -> Frame | None:
    """The frame header of a 3-component sequential Huffman JPEG, or ``None`` for anything else
    (or a header this walk cannot follow)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan or end of image before a frame
            return None
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            return None
        if marker in SEQUENTIAL_SOF:
            if pos + 10 > end:
                return None
            height, width, components = struct.unpack_from(">HHB", data, pos + 5)
            if components != 3 or height == 0 or width == 0 or pos + 10 + 3 * components > end:
                return None
            vertical = max(data[pos + 10 + 3 * i + 1] & 0x0F for i in range(components))
            if not 1 <= vertical <= 4:
                return None
            return Frame(pos + 5, width, height, 8 * vertical)
        if marker in OTHER_SOF:
            return None
        pos += 2 + length
    return None


def scale_for(box_width: float, box_height: float, size: int) -> int:
    """The smallest DCT scale, in eighths (:data:`SCALES`), at which a box still spans ``size``
    pixels each way (8 when none smaller does)."""
    need = size / min(box_width, box_height)
    return min(n for n in SCALES if n == 8 or n / 8 >= need)


def decode_rows(data: bytes, frame: Frame, bottom: int, eighths: int = 8) -> np.ndarray | None:
    """The top rows of ``data`` as an ``h x W x 3`` uint8 RGB array, at ``eighths``/8 of full
    size (``W`` = ceil(width * eighths / 8)), covering at least source rows ``[0, bottom)``; the
    rows returned equal those of a full decode at that scale. ``None`` when the fast path does
    not apply (see the module docstring)."""
    if not data.rstrip(b"\x00").endswith(_EOI):  # truncated (or trailing junk): Pillow decides
        return None
    rows = min(frame.height, (math.ceil(bottom / frame.mcu_rows) + 1) * frame.mcu_rows)
    if rows < frame.height:
        data = b"".join((data[:frame.height_offset], struct.pack(">H", rows), data[frame.height_offset + 2:]))
    try:
        # strict=False: a shortened frame leaves coded rows behind, which libjpeg reports as
        # extraneous data before the EOI marker (a warning); errors still raise
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_width=math.ceil(frame.width * eighths / 8), strict=False)
    except ValueError:
        return None
    if pixels.shape[1] != math.ceil(frame.width * eighths / 8):  # another scale than asked: not this path's
        return None
    return pixels
