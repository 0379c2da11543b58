"""Safe decoding of untrusted images: bytes in, an upright 8-bit RGB JPEG of bounded size out.

Corpus images come from the open web, so every step assumes hostile input:

- Only an allowlist of raster formats is tried (:data:`FORMATS`); Pillow's other plugins (EPS calls
  Ghostscript, for one) never see the bytes.
- The pixel count is checked from the header *before* any pixel is decoded (``Image.open`` is lazy),
  and so are the bytes decoding will take: the mode (also in the header) sets the bytes per pixel
  (:data:`DECODE_BYTES_PER_PIXEL`), and no image may take more than an RGB image at the pixel
  limit. Pillow's own decompression-bomb guard is kept as a second line: its error becomes the
  same skip.
- JPEGs are decoded at a reduced DCT scale (``draft``) when the target size allows, so a large photo
  costs a fraction of a full decode in time and memory.
- Truncated or corrupt files raise :class:`ImageSkip` carrying a named reason; nothing here sets
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` (a process-wide switch that would hide damage everywhere).

These rules live in one place, :func:`open_untrusted`, which every decoder of untrusted bytes goes
through: this module's :func:`decode`, the loader's transforms and its device-decode fallback, and
the near-duplicate tools.

Colour handling: CMYK, grayscale, bilevel and palette images become RGB; transparency (alpha
channels, ``tRNS`` chunks, transparent palette entries) is composited on white, which is what a
viewer shows for most web images; 16-bit samples keep their top 8 bits; EXIF orientation is applied
so the output is upright; animated and multi-frame files give their first frame.
"""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from data.images.jpeg_region import restart_blocks

#: formats tried by ``Image.open`` (multi-picture MPO files open through the JPEG plugin);
#: anything else is skipped as ``unsupported_format``
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "ICO")
DEFAULT_SHORT_SIDE = 288
DEFAULT_QUALITY = 90
DEFAULT_MAX_PIXELS = 100_000_000
# Pillow widens every filter when downscaling (antialiasing), so bilinear is a proper low-pass
# filter here, as in torchvision's Resize default; bicubic costs ~30% more CPU per image.
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS}
DEFAULT_RESAMPLE = "bilinear"
#: the most bytes an encoded image may have: far above any web photo (a 100-megapixel JPEG is
#: 20-50 MB), and a bound on what one read may hold in memory, whatever a tar header claims
MAX_IMAGE_BYTES = 64 * 2**20
#: Peak bytes per pixel of decoding an image of each mode and converting it to 8-bit RGB here
#: (the decoded frame, its copies and the RGB result; peak RSS of convert() on 20-megapixel PNGs
#: and TIFFs: RGB 4.3, L/P/1 5.3, P with transparency 10, RGBA/LA 13, I;16 19, I 21). A JPEG
#: decoded at reduced scale (draft) costs far less; it is counted at full size all the same.
DECODE_BYTES_PER_PIXEL = {"RGB": 4, "YCbCr": 4, "1": 5, "L": 5, "P": 5, "CMYK": 8, "F": 4,
                          "RGBA": 13, "RGBa": 13, "LA": 13, "La": 13, "PA": 13,
                          "I;16": 19, "I;16L": 19, "I;16B": 19, "I;16N": 19, "I": 21}
_TRANSPARENT_BYTES_PER_PIXEL = 13  # tRNS: composited through RGBA (palette images measured 10)
_UNKNOWN_MODE_BYTES_PER_PIXEL = max(DECODE_BYTES_PER_PIXEL.values())
# Pillow raises DecompressionBombError above twice its MAX_IMAGE_PIXELS whatever we ask for, so a
# larger limit could not be honoured.
PILLOW_HARD_LIMIT = 2 * Image.MAX_IMAGE_PIXELS

# EXIF orientation -> the transpose that makes the image upright (the table ImageOps.exif_transpose
# uses; applied here to the small resized image instead of the full decode).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112
_WHITE = (255, 255, 255)


class ImageSkip(Exception):
    """An image that cannot be used; ``reason`` is the counted skip name (``corrupt``,
    ``truncated``, ``too_many_pixels``, ``unsupported_format``, ``unsupported_mode``; and
    ``too_large``, an encoded image over :data:`MAX_IMAGE_BYTES`, from ``data.images.sources.read_image``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageSettings:
    """How images are converted; recorded in info.json."""

    short_side: int = DEFAULT_SHORT_SIDE
    quality: int = DEFAULT_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS
    resample: str = DEFAULT_RESAMPLE

    def __post_init__(self) -> None:
        if self.short_side < 1:
            raise ValueError(f"short side must be >= 1, got {self.short_side}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample filter must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")
        if not 1 <= self.max_pixels <= PILLOW_HARD_LIMIT:
            raise ValueError(f"max pixels must be in 1..{PILLOW_HARD_LIMIT} (Pillow's hard "
                             f"decompression-bomb bound), got {self.max_pixels}")

    def to_dict(self) -> dict:
        return {**asdict(self), "format": "jpeg", "never_upscale": True,
                "alpha_background": "white", "exif_orientation": "applied"}


@dataclass(frozen=True)
class ConvertedImage:
    """A re-encoded image, the decoded pixels it came from, and the source's header size."""

    jpeg: bytes
    image: Image.Image
    original_size: tuple[int, int]


def target_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """Size with the shorter side at most ``short_side``, aspect kept, never upscaled."""
    width, height = size
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def convert(data: bytes, settings: ImageSettings = ImageSettings()) -> ConvertedImage:
    """Decode ``data``, make it upright RGB with short side <= ``settings.short_side``, re-encode
    as JPEG. Raises :class:`ImageSkip` for anything that cannot be converted."""
    image, original_size = decode(data, settings)
    buffer = io.BytesIO()
    # 4:2:0 (Pillow's default at these qualities, named so that the restart interval's MCU width
    # holds), with restart markers that let the loader decode only a crop's columns
    # (data/images/jpeg_region.py: ~1.8 % more bytes; a train crop decodes in ~20 % less CPU than
    # with its rows alone, docs/loader.md).
    image.save(buffer, "JPEG", quality=settings.quality, subsampling="4:2:0",
               restart_marker_blocks=restart_blocks(image.width, mcu_width=16))
    return ConvertedImage(buffer.getvalue(), image, original_size)


def decode(data: bytes, settings: ImageSettings = ImageSettings()) -> tuple[Image.Image, tuple[int, int]]:
    """The upright, resized RGB image of ``data`` and the source's (width, height)."""
    with open_untrusted(data, settings.max_pixels) as image:
        return _decode_resized(image, settings)


@contextmanager
def open_untrusted(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """``with open_untrusted(data, max_pixels) as image:`` the lazily opened image of untrusted
    ``data`` (header read, no pixel decoded yet), for the block to decode. Only :data:`FORMATS` are
    tried; the header's pixel count is checked against ``max_pixels`` first; any exception raised
    while opening, or inside the block while decoding, leaves as the named :class:`ImageSkip`."""
    # Pillow plugins raise many exception types on hostile bytes (struct.error, IndexError,
    # SyntaxError, ...): every one of them means "this file is broken", so all are caught here.
    try:
        with warnings.catch_warnings():
            # Our own limit replaces the bomb warning (the hard bound still raises), and Pillow's
            # "corrupt EXIF" chatter would flood a build's progress output; neither is an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_pixels(*image.size, max_pixels)
            _check_decoded_bytes(image, max_pixels)
            yield image
    except ImageSkip:
        raise
    except Exception as err:  # noqa: BLE001 - see the comment at the top of the try block
        raise _skip_for(err, data) from None


def _skip_for(err: Exception, data: bytes) -> ImageSkip:
    """The named skip for an exception raised while opening or decoding ``data``."""
    if isinstance(err, Image.DecompressionBombError):
        return ImageSkip("too_many_pixels", str(err))
    if isinstance(err, Image.UnidentifiedImageError):
        claimed = claimed_format(data)
        if claimed is not None:
            return ImageSkip("corrupt", f"starts like {claimed} but {claimed} cannot read it")
        return ImageSkip("unsupported_format", f"not one of {', '.join(FORMATS)}")
    if isinstance(err, MemoryError):
        return ImageSkip("too_many_pixels", "out of memory while decoding")
    if isinstance(err, OSError) and "truncated" in str(err).lower():  # "Truncated File Read" too
        return ImageSkip("truncated", f"{type(err).__name__}: {err}")
    return ImageSkip("corrupt", f"{type(err).__name__}: {err}")


def _decode_resized(image: Image.Image, settings: ImageSettings) -> tuple[Image.Image, tuple[int, int]]:
    size = image.size
    orientation = _orientation(image)
    target = target_size(size, settings.short_side)
    if image.format in ("JPEG", "MPO") and target != size:
        # DCT-domain downscale by 1/2, 1/4 or 1/8, never below the target size.
        image.draft("RGB", target)
    image.load()
    rgb = to_rgb(image)
    if rgb.size != target:
        rgb = rgb.resize(target, RESAMPLE[settings.resample], reducing_gap=3.0)
    if orientation in _ORIENTATION:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    return rgb, size


def claimed_format(data: bytes) -> str | None:
    """The allowlisted format whose signature ``data`` starts with, if any."""
    Image.init()
    prefix = data[:16]
    for name in FORMATS:
        accept = Image.OPEN[name][1] if name in Image.OPEN else None
        if accept is not None and accept(prefix):
            return name
    return None


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image by its header size before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise ImageSkip("corrupt", f"empty image {width}x{height}")
    if width * height > max_pixels:
        raise ImageSkip("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")


def _decoded_bytes(image: Image.Image) -> int:
    """About the most memory decoding the opened (not yet loaded) ``image`` to RGB takes, in bytes."""
    per_pixel = DECODE_BYTES_PER_PIXEL.get(image.mode, _UNKNOWN_MODE_BYTES_PER_PIXEL)
    if "transparency" in image.info:
        per_pixel = max(per_pixel, _TRANSPARENT_BYTES_PER_PIXEL)
    return image.size[0] * image.size[1] * per_pixel


def _check_decoded_bytes(image: Image.Image, max_pixels: int) -> None:
    """Refuse an image whose decode would take more memory than an RGB image at the pixel limit
    (a 16-bit RGBA PNG of 100 M pixels compresses to under 1 MB and takes 1.3 GB)."""
    needed, allowed = _decoded_bytes(image), max_pixels * DECODE_BYTES_PER_PIXEL["RGB"]
    if needed > allowed:
        width, height = image.size
        raise ImageSkip("too_many_pixels", f"{width}x{height} {image.mode} takes about {needed >> 20} MiB to "
                                           f"decode, more than an RGB image of {max_pixels} pixels ({allowed >> 20} MiB)")


def _orientation(image: Image.Image) -> int:
    # A damaged EXIF block must not cost the picture: treat it as "no orientation".
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # noqa: BLE001 - any EXIF parse failure means "unknown orientation"
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a loaded image of any mode; transparency composited on white."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = _sixteen_bit_to_l(image)
    elif image.mode == "F":
        raise ImageSkip("unsupported_mode", "floating-point samples")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _composite_on_white(image)
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # Pillow's I;16 -> L conversion clips at 255 instead of scaling; keep the top 8 bits.
    samples = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    gray = Image.fromarray((samples >> 8).astype(np.uint8), "L")
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return gray
    # tRNS names one exact 16-bit value; match it before the reduction merges 256 values into one.
    alpha = Image.fromarray(np.where(samples == transparent, 0, 255).astype(np.uint8), "L")
    return Image.merge("LA", (gray, alpha))


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
