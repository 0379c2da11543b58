"""The real photos the shard-building benchmarks build from, and byte-distinct copies of them.

``source_photos`` reads the real photos of ../shared/data (ImageNet samples, and the hymenoptera
set when asked), or makes synthetic photos of the same size when that folder is absent.
``with_comment`` gives a photo other bytes (a JPEG comment segment after SOI) and the same pixels,
so exact-duplicate removal keeps each copy while the decoding work stays that of the photo.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
IMAGENET = SHARED / "imagenet_samples"
HYMENOPTERA = SHARED / "hymenoptera" / "hymenoptera_data"


def source_photos(folder: Path = IMAGENET, count: int = 250, extra: Path | None = None) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of the real photos of ``folder`` (and of every .jpg under ``extra``), or
    of ``count`` synthetic 500x375 photos when ``folder`` is absent."""
    files = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
    if files:
        if extra is not None and extra.is_dir():
            files += sorted(extra.rglob("*.jpg"))
        return [(f.stem, f.read_bytes()) for f in files]
    print(f"{folder} not found: using {count} synthetic 500x375 photos", flush=True)
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((500, 375), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (375, 500, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=90)
        photos.append((f"synthetic_{i:03d}", out.getvalue()))
    return photos


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a COM segment after SOI: other bytes, same pixels."""
    payload = text.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]
