"""Small real shard directories for loader tests: real JPEG bytes, real tars, an info.json.

The tars are written with data.shards.tar_writer (what the shard builder uses), the info.json with the
fields data/shards/build.py writes that the loader reads (shards per split with sample counts,
num_samples, label_counts, vocab.num_labels). Images are smooth random colour fields with noise,
so JPEG coding and DCT-domain downscaling behave as on photos.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from data.shards.tar_writer import write_tar


def photo_like(rng: np.random.Generator, width: int, height: int, quality: int = 90) -> bytes:
    """JPEG bytes of a smooth random image with mild noise."""
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 6, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


@dataclass
class Sample:
    key: str
    labels: list[int]
    image: bytes | None = None  # None: made by the factory
    json_bytes: bytes | None = None  # None: {"labels": ..., "tags": ...}


def sample_members(sample: Sample, rng: np.random.Generator, size: tuple[int, int]) -> list[tuple[str, bytes]]:
    image = sample.image if sample.image is not None else photo_like(rng, *size)
    meta = sample.json_bytes if sample.json_bytes is not None else json.dumps(
        {"key": sample.key, "labels": sample.labels, "tags": [f"t{l}" for l in sample.labels]}).encode()
    return [(f"{sample.key}.jpg", image), (f"{sample.key}.json", meta)]


def write_shard_dir(root: Path, shards: Sequence[Sequence[Sample]], num_labels: int, split: str = "train",
                    size: tuple[int, int] = (80, 64), seed: int = 0) -> Path:
    """``root/<split>-%06d.tar`` per list of samples, and info.json describing them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, label_counts = [], [0] * num_labels
    for index, samples in enumerate(shards):
        name = f"{split}-{index:06d}.tar"
        members = [m for sample in samples for m in sample_members(sample, rng, size)]
        write_tar(root / name, members)
        entries.append({"name": name, "samples": len(samples)})
        for sample in samples:
            for label in set(sample.labels):
                if 0 <= label < num_labels:
                    label_counts[label] += 1
    total = sum(len(s) for s in shards)
    info = {"format": "openwsl-shards", "version": 1,
            "vocab": {"num_labels": num_labels, "tags": [f"t{i}" for i in range(num_labels)]},
            "shards": {split: entries, **({} if split == "val" else {"val": []})},
            "num_samples": {split: total, "total": total},
            "label_counts" if split == "train" else "val_label_counts": label_counts}
    (root / "info.json").write_text(json.dumps(info))
    return root


def img2dataset_members(count: int, rng: np.random.Generator, tags=None) -> list[tuple[str, bytes]]:
    """Members of an img2dataset tar: ``<key>.jpg`` + ``<key>.json`` (key, url ``http://x/<i>.jpg``
    and, when ``tags`` is given, ``tags(i)``) for keys ``000000000`` ..."""
    members = []
    for i in range(count):
        key = f"{i:09d}"
        row = {"key": key, "url": f"http://x/{i}.jpg", **({} if tags is None else {"tags": tags(i)})}
        members += [(f"{key}.jpg", photo_like(rng, 64, 48)), (f"{key}.json", json.dumps(row).encode())]
    return members


def simple_shards(root: Path, sizes: Sequence[int], num_labels: int = 5, split: str = "train",
                  size: tuple[int, int] = (80, 64), seed: int = 0) -> Path:
    """Shards of ``sizes[i]`` good samples each; keys ``s<shard>_<i>``, label ``i % num_labels``."""
    shards = [[Sample(f"s{s}_{i:04d}", [i % num_labels]) for i in range(n)] for s, n in enumerate(sizes)]
    return write_shard_dir(root, shards, num_labels, split, size, seed)


def built_files(directory: Path) -> dict[str, bytes]:
    """Every file of a built shard directory a user gets, by path: the builder's own state in
    ``.build/`` (scan parts, plan, manifests, per-node timings) is left out."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and ".build" not in p.relative_to(directory).parts}


def with_vocab_sha256(root: Path, digest: str = "ab" * 32) -> Path:
    """Record a vocabulary sha256 in ``root``'s info.json, as the shard builder does (mixtures of
    shard sets check that their sets share it)."""
    info = json.loads((root / "info.json").read_text())
    info["vocab"]["sha256"] = digest
    (root / "info.json").write_text(json.dumps(info))
    return root
