"""Decode only the region of a baseline JPEG that a crop needs (libjpeg-turbo through simplejpeg).

A random resized crop keeps, on average, well under half of a stored image, yet a JPEG decoder
decodes the whole frame. Two properties of a sequential JPEG let most of the rest stay coded:

- **Rows.** The frame is coded top to bottom, one row of MCUs after another, so the rows below a
  crop can be left alone: the frame height in the SOF header is rewritten to the crop's bottom
  plus two pixels of the decoded scale (the chroma samples that fancy upsampling blends into the
  last row; a frame's edge replicates its last sample instead), rounded up to whole MCU rows, and
  libjpeg-turbo stops there, passing over the coded rest as bytes.
- **Columns, with restart markers.** When the scan has restart markers every ``n`` MCUs and ``n``
  divides the MCUs of a row (every row then starts a new interval, and each interval decodes on
  its own: the DC predictions restart), the intervals that cover the crop and a margin of two
  pixels all round (the chroma samples the upsampling blends into its edge pixels) are cut out of
  the entropy-coded data and put together as a smaller JPEG (frame size rewritten, markers
  renumbered); intervals outside it are neither entropy-decoded nor transformed. The shard builder
  writes such markers (:func:`restart_blocks`: every ~64 px of 4:2:0, +1.8 % bytes).

Either way the pixels returned are those of a full decode, bit for bit
(tests/data/images/test_jpeg_region.py checks this against Pillow's decode of the untouched
bytes). Optionally the frame is decoded at a reduced DCT scale (1/2, 1/4, 1/8: the scales
libjpeg-turbo has SIMD code for, as Pillow's ``draft``).

This is a fast path, never a second guard: callers open the bytes with
:func:`data.images.decode.open_untrusted` first (format allowlist, pixel and memory limits), and
:func:`decode_region` returns ``None`` for anything it does not handle exactly (progressive or
arithmetic-coded frames, CMYK or grayscale, a stream that does not end in an EOI marker, which is
how a truncated file looks, a decoder error), so the caller falls back to Pillow, whose handling
of damaged files (the counted skips) is unchanged.
"""
from __future__ import annotations

import math
import re
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
#: the restart interval the shard builder aims at, in MCUs (4 x 16 px of a 4:2:0 image): shorter
#: intervals cost more bytes and more splicing, longer ones decode more columns outside the crop
RESTART_TARGET_MCUS = 4
_EOI = b"\xff\xd9"
#: a restart marker: inside entropy-coded data every other 0xFF byte is followed by 0x00
_RST = re.compile(rb"\xff[\xd0-\xd7]")
_RST_MARKERS = tuple(bytes((0xFF, 0xD0 + n)) for n in range(8))


@dataclass(frozen=True)
class Frame:
    """What :func:`decode_region` needs of a sequential JPEG's headers."""
    height_offset: int  # byte offset of the SOF's 2-byte frame height (its width follows)
    width: int
    height: int
    mcu_width: int  # pixels per MCU: 8 x the largest sampling factor each way
    mcu_height: int
    restart_interval: int  # MCUs per restart interval (the DRI segment); 0 without markers
    scan_start: int | None  # offset of the entropy-coded data when one scan holds all 3 components


def sequential_frame(data: bytes) -> Frame | None:
    """The headers of a 3-component sequential Huffman JPEG, or ``None`` for anything else (or a
    header this walk cannot follow)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    sof, interval = None, 0
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9 or (marker == 0xDA and sof is None):  # no frame before the scan or the end
            return None
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            return None
        if marker in SEQUENTIAL_SOF:
            if sof is not None or pos + 10 > end:
                return None
            height, width, components = struct.unpack_from(">HHB", data, pos + 5)
            if components != 3 or height == 0 or width == 0 or pos + 10 + 3 * components > end:
                return None
            factors = [data[pos + 10 + 3 * i + 1] for i in range(components)]
            horizontal, vertical = max(f >> 4 for f in factors), max(f & 0x0F for f in factors)
            if not (1 <= horizontal <= 4 and 1 <= vertical <= 4):
                return None
            sof = (pos + 5, width, height, 8 * horizontal, 8 * vertical)
        elif marker in OTHER_SOF:
            return None
        elif marker == 0xDD and length == 4 and pos + 6 <= end:  # DRI: the restart interval
            interval = struct.unpack_from(">H", data, pos + 4)[0]
        elif marker == 0xDA:
            interleaved = pos + 4 < end and data[pos + 4] == 3
            return Frame(*sof, interval, pos + 2 + length if interleaved else None)
        pos += 2 + length
    return None


def scale_for(box_width: float, box_height: float, size: int) -> int:
    """The smallest DCT scale, in eighths (:data:`SCALES`), at which a box still spans ``size``
    pixels each way (8 when none smaller does)."""
    need = size / min(box_width, box_height)
    return min(n for n in SCALES if n == 8 or n / 8 >= need)


def restart_blocks(width: int, mcu_width: int = 16) -> int:
    """The restart interval, in MCUs, for an image ``width`` pixels wide: the divisor of its MCUs
    per row nearest :data:`RESTART_TARGET_MCUS` (the larger on a tie), so that every MCU row starts
    an interval and :func:`decode_region` can cut columns (``restart_marker_blocks`` of Pillow's
    JPEG encoder; ``mcu_width`` 16 is 4:2:0's)."""
    per_row = math.ceil(width / mcu_width)
    return min((n for n in range(1, per_row + 1) if per_row % n == 0),
               key=lambda n: (abs(n - RESTART_TARGET_MCUS), -n))


def decode_region(data: bytes, frame: Frame, box: tuple[int, int, int, int],
                  eighths: int = 8) -> tuple[np.ndarray, int, int] | None:
    """``(pixels, x0, y0)``: an ``h x w x 3`` uint8 RGB array at ``eighths``/8 of full size whose
    top-left pixel is source pixel ``(x0, y0)``, covering at least the source pixels of the
    whole-pixel ``box`` (left, top, right, bottom), and equal there to a full decode at that
    scale. ``None`` when the fast path does not apply (see the module docstring)."""
    if not data.rstrip(b"\x00").endswith(_EOI):  # truncated (or trailing junk): Pillow decides
        return None
    region = _restart_region(data, frame, box, eighths)
    if region is not None:
        data, x0, y0, width = region
    else:
        x0 = y0 = 0
        width = frame.width
        rows = min(frame.height, math.ceil((box[3] + _margin(eighths)) / frame.mcu_height) * frame.mcu_height)
        if rows < frame.height:
            data = b"".join((data[:frame.height_offset], struct.pack(">H", rows), data[frame.height_offset + 2:]))
    try:
        # strict=False: a shortened frame leaves coded rows behind, which libjpeg reports as
        # extraneous data before the EOI marker (a warning); errors still raise
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_width=math.ceil(width * eighths / 8), strict=False)
    except ValueError:
        return None
    if pixels.shape[1] != math.ceil(width * eighths / 8):  # another scale than asked: not this path's
        return None
    return pixels, x0, y0


def _margin(eighths: int) -> int:
    """Source pixels decoded beyond a box's edges: two pixels of the decoded scale, the chroma
    samples that fancy upsampling blends into the box's edge pixels (a frame's edge replicates its
    last sample instead, so a region cut closer would differ there)."""
    return 16 // eighths


def _restart_region(data: bytes, frame: Frame, box: tuple[int, int, int, int],
                    eighths: int) -> tuple[bytes, int, int, int] | None:
    """The JPEG of the restart intervals around ``box``, with its source origin and width; None
    without usable restart markers (or when their count is not the frame's), and when the region
    would be whole rows from the top, which the rows path decodes without splicing."""
    interval, start = frame.restart_interval, frame.scan_start
    per_row = math.ceil(frame.width / frame.mcu_width)
    if not interval or start is None or per_row % interval:
        return None
    columns, span = per_row // interval, interval * frame.mcu_width  # intervals per row, their width
    rows = math.ceil(frame.height / frame.mcu_height)
    left, top, right, bottom = box
    margin = _margin(eighths)
    r0 = max(0, (top - margin) // frame.mcu_height)
    r1 = min(rows, math.ceil((bottom + margin) / frame.mcu_height))
    c0, c1 = max(0, (left - margin) // span), min(columns, math.ceil((right + margin) / span))
    if r0 == 0 and c0 == 0 and c1 == columns:  # every column from the top: the rows path, unspliced
        return None
    # The intervals up to the last row needed (a regex split stops there: the rows below are
    # never scanned); fewer of them than the frame needs means this is not this path's file.
    pieces = _RST.split(data[start:data.rindex(_EOI)], r1 * columns)
    if len(pieces) != (rows * columns if r1 == rows else r1 * columns + 1):
        return None
    x0, y0 = c0 * span, r0 * frame.mcu_height
    width = (c1 - c0) * span if c1 < columns else frame.width - x0
    height = (r1 - r0) * frame.mcu_height if r1 < rows else frame.height - y0
    out = [data[:frame.height_offset], struct.pack(">HH", height, width), data[frame.height_offset + 4:start]]
    n = 0
    for row in range(r0 * columns, r1 * columns, columns):
        for piece in pieces[row + c0:row + c1]:
            out += (piece, _RST_MARKERS[n & 7])
            n += 1
    out[-1] = _EOI
    return b"".join(out), x0, y0, width

