"""Near-duplicate detection against an evaluation set: a 64-bit DCT perceptual hash and an index.

The paper removes pretraining images that are near-duplicates of evaluation images so that transfer
numbers are not inflated by test images seen during pretraining. We use the classic pHash: the
image in grayscale at 32x32, its 2-D DCT, the 8x8 lowest frequencies compared with their median,
one bit each. Resizing and JPEG re-encoding move few of those bits; unrelated photos differ in about
half of them. Both sides are hashed from the image as :func:`data.images.decode.decode` returns it
(upright, short side <= 288), so the eval set and the corpus go through one pipeline.

:data:`DEFAULT_THRESHOLD` (a Hamming distance, inclusive) comes from a measured separation on the
250 real photos of ../shared/data/imagenet_samples (:func:`measure_separation`; the figures and the
command are in docs/shards.md): resized and re-encoded copies stay far below it, unrelated pairs
far above.
"""
from __future__ import annotations

import functools
import glob
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from data.atomic_write import write_bytes
from data.errors import UserError
from data.images.decode import DEFAULT_MAX_PIXELS, ImageSettings, ImageSkip, decode, open_untrusted
from data.images.sources import FileImage, MissingImage, read_image
from data.tar_member import IMAGE_SUFFIXES, TarMember, is_image_file, split_member_name
from data.worker_pool import ordered_map

HASH_SIDE = 32
HASH_BITS = 8
DEFAULT_THRESHOLD = 10


def _dct_matrix(n: int, rows: int) -> np.ndarray:
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


# Only the lowest HASH_BITS frequencies are kept, so only those rows of the DCT-II basis are needed.
_DCT = _dct_matrix(HASH_SIDE, HASH_BITS)
_BIT_WEIGHTS = np.uint64(1) << np.arange(HASH_BITS * HASH_BITS, dtype=np.uint64)


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash of ``image`` (any mode)."""
    small = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    pixels = np.asarray(small, dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T
    bits = (low > np.median(low)).ravel()
    return int(np.bitwise_or.reduce(_BIT_WEIGHTS[bits], initial=np.uint64(0)))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass
class EvalIndex:
    """Perceptual hashes of an evaluation set and the names of its images."""

    hashes: np.ndarray  # uint64, one per eval image
    names: list[str]
    threshold: int = DEFAULT_THRESHOLD
    source: str = ""
    unreadable: int = 0

    def nearest(self, value: int) -> tuple[int, int]:
        """(Hamming distance, eval index) of the closest eval image; (65, -1) for an empty index."""
        if len(self.hashes) == 0:
            return HASH_BITS * HASH_BITS + 1, -1
        distances = np.bitwise_count(self.hashes ^ np.uint64(value))
        best = int(np.argmin(distances))
        return int(distances[best]), best

    def match(self, value: int) -> tuple[str, int] | None:
        """(eval image name, distance) when ``value`` is within the threshold of one, else None."""
        distance, best = self.nearest(value)
        return (self.names[best], distance) if distance <= self.threshold else None

    def describe(self) -> dict:
        return {"source": self.source, "images": len(self.names), "unreadable": self.unreadable,
                "hash": f"dct-phash-{HASH_BITS * HASH_BITS}", "threshold": self.threshold}

    def save(self, path: str | Path) -> None:
        """Write the index (atomically) for :meth:`load`: a build's later phases and ``--finalize``
        use the index its plan was made with, wherever the eval set is by then."""
        buffer = io.BytesIO()
        np.savez(buffer, hashes=self.hashes, names=np.array(self.names, dtype=str),
                 about=np.array([self.source, str(self.threshold), str(self.unreadable)], dtype=str))
        write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "EvalIndex":
        with np.load(path, allow_pickle=False) as saved:
            source, threshold, unreadable = saved["about"].tolist()
            return cls(saved["hashes"].astype(np.uint64), saved["names"].tolist(), int(threshold), source,
                       int(unreadable))


def eval_images(location: str | Path) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, read bytes) of every image in an eval set, in a stable order.

    ``location`` is a directory tree of images (e.g. an ImageFolder), a directory of WebDataset
    shards, one ``.tar`` file, or a glob pattern of tars. Tar members are read in place, never
    extracted, and their names are only labels. Reading goes through
    :func:`data.images.sources.read_image`, with its size limit.
    """
    path = Path(location)
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        if tars:
            yield from _tar_images(tars)
            return
        files = sorted(p for p in path.rglob("*") if is_image_file(p.name) and p.is_file())
        if not files:
            raise UserError(f"--exclude-near {location}: no images or .tar shards found in that directory")
        for file in files:
            yield str(file.relative_to(path)), functools.partial(read_image, FileImage(str(file)))
        return
    tars = sorted(Path(p) for p in glob.glob(str(location)) if p.endswith(".tar") and Path(p).is_file())
    if not tars:
        raise UserError(f"--exclude-near {location}: not a directory, a .tar file or a glob of .tar "
                        "files; pass the evaluation images' folder or shards")
    yield from _tar_images(tars)


def _tar_images(tars: Sequence[Path]) -> Iterator[tuple[str, Callable[[], bytes]]]:
    for tar in tars:
        try:
            with tarfile.open(tar, "r:") as archive:
                members = [m for m in archive.getmembers() if m.isfile() and _is_sample_image(m.name)]
        except (OSError, tarfile.TarError) as err:
            raise UserError(f"--exclude-near: cannot read shard {tar}: {err}") from None
        for member in members:
            yield f"{tar.name}:{member.name}", functools.partial(read_image, TarMember.of(tar, member))


def _is_sample_image(name: str) -> bool:
    named = split_member_name(name)
    return named is not None and named[1] in IMAGE_SUFFIXES


def hash_bytes(data: bytes, settings: ImageSettings = ImageSettings()) -> int | None:
    """pHash of an encoded image as the builder sees it; None when it cannot be decoded."""
    try:
        image, _ = decode(data, settings)
    except ImageSkip:
        return None
    return phash(image)


def _hash_batch(batch: list[bytes], settings: ImageSettings) -> list[int | None]:
    return [hash_bytes(data, settings) for data in batch]


def build_eval_index(location: str | Path, settings: ImageSettings = ImageSettings(),
                     threshold: int = DEFAULT_THRESHOLD, pool: Any = None,
                     batch_size: int = 64, progress: Callable[[int], None] | None = None) -> EvalIndex:
    """Hash every image of an eval set (see :func:`eval_images`), on ``pool`` (a
    :func:`data.worker_pool.start_pool`) when given; unreadable ones are counted."""
    names: list[str] = []
    hashes: list[int] = []
    unreadable = 0
    for batch_names, values in _hash_in_batches(eval_images(location), settings, pool, batch_size):
        for name, value in zip(batch_names, values):
            if value is None:
                unreadable += 1
            else:
                names.append(name)
                hashes.append(value)
        if progress is not None:
            progress(len(batch_names))
    return EvalIndex(np.array(hashes, dtype=np.uint64), names, threshold, str(location), unreadable)


def _hash_in_batches(items: Iterable[tuple[str, Callable[[], bytes]]], settings: ImageSettings,
                     pool: Any, batch_size: int) -> Iterator[tuple[list[str], list]]:
    def batches() -> Iterator[tuple[list[str], list[bytes]]]:
        names, blobs = [], []
        for name, read in items:
            names.append(name)
            blobs.append(_read_or_empty(read))
            if len(names) == batch_size:
                yield names, blobs
                names, blobs = [], []
        if names:
            yield names, blobs

    hash_batch = functools.partial(_hash_batch, settings=settings)
    if pool is None:
        for names, blobs in batches():
            yield names, hash_batch(blobs)
        return
    pending: list[list[str]] = []

    def blobs_only() -> Iterator[list[bytes]]:
        for names, blobs in batches():
            pending.append(names)
            yield blobs

    for values in ordered_map(pool, hash_batch, blobs_only(), ahead=8):
        yield pending.pop(0), values


def _read_or_empty(read: Callable[[], bytes]) -> bytes:
    """The image's bytes; empty (so: unreadable) when it is gone or over the size limit."""
    try:
        return read()
    except (MissingImage, ImageSkip):
        return b""


@dataclass
class Separation:
    """Hamming distances of altered copies to their originals vs between unrelated images."""

    originals: int
    copies: np.ndarray
    unrelated: np.ndarray

    def summary(self, threshold: int = DEFAULT_THRESHOLD) -> dict:
        return {
            "images": self.originals,
            "copies": int(self.copies.size), "copy_max": int(self.copies.max()),
            "copy_p99": float(np.percentile(self.copies, 99)),
            "copies_missed_at_threshold": int((self.copies > threshold).sum()),
            "unrelated_pairs": int(self.unrelated.size), "unrelated_min": int(self.unrelated.min()),
            "unrelated_p01": float(np.percentile(self.unrelated, 1)),
            "unrelated_flagged_at_threshold": int((self.unrelated <= threshold).sum()),
            "threshold": threshold,
        }


#: the alterations a near-duplicate must survive: (short side, JPEG quality) of the copy
ALTERATIONS = ((160, 90), (96, 75), (288, 50), (64, 60), (224, 30))


def altered_copy(data: bytes, short_side: int, quality: int) -> bytes:
    """``data`` resized to ``short_side`` (shorter side) and re-encoded at ``quality``; ``ImageSkip``
    when ``data`` cannot be decoded."""
    with open_untrusted(data, DEFAULT_MAX_PIXELS) as image:
        image = image.convert("RGB")
        scale = short_side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        out = io.BytesIO()
        image.resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=quality)
    return out.getvalue()


def measure_separation(files: Sequence[Path], alterations=ALTERATIONS) -> Separation:
    """Distances of every altered copy to its original and of every pair of distinct originals."""
    originals, copies = [], []
    for file in files:
        data = Path(file).read_bytes()
        original = hash_bytes(data)
        if original is None:
            continue
        originals.append(original)
        for side, quality in alterations:
            copy = hash_bytes(altered_copy(data, side, quality))
            copies.append(HASH_BITS * HASH_BITS if copy is None else hamming(original, copy))
    values = np.array(originals, dtype=np.uint64)
    upper = np.triu_indices(len(values), k=1)
    unrelated = np.bitwise_count(values[upper[0]] ^ values[upper[1]]).astype(np.int64)
    return Separation(len(originals), np.array(copies, dtype=np.int64), unrelated)
