"""Small real datasets and weight files for the transfer tests: JPEGs written with PIL, tars written
with tarfile, models saved with torch.save / safetensors."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from pretrain.model import create_model

# Class colours: a random-init network's pooled features separate these easily, so a probe learns.
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200), "yellow": (220, 210, 40)}


def coloured_jpeg(rng: np.random.Generator, colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    """A JPEG of ``colour`` with texture noise and a random darker blob (real bytes, real decode)."""
    width, height = size
    pixels = np.array(colour, dtype=np.float64) + rng.normal(0, 25, (height, width, 3))
    x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
    pixels[y:y + height // 3, x:x + width // 3] *= 0.6
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def image_folder(root: Path, per_class: dict[str, int], seed: int = 0,
                 colours: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """``root/<class>/<i>.jpg``; classes map to colours in order (or by ``colours``)."""
    rng = np.random.default_rng(seed)
    palette = colours or dict(zip(per_class, COLOURS.values()))
    for name, count in per_class.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"{name}_{i:03d}.jpg").write_bytes(coloured_jpeg(rng, palette[name]))
    return root


def wds_shards(root: Path, shard_sizes: Sequence[int], num_classes: int, seed: int = 0) -> list[tuple[str, int]]:
    """Labelled WebDataset tars (``<key>.cls`` + ``<key>.jpg``); returns (key, class) in write order."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for shard, size in enumerate(shard_sizes):
        with tarfile.open(root / f"imagenet1k-train-{shard:04d}.tar", "w") as tar:
            for i in range(size):
                key, label = f"s{shard:02d}_{i:04d}", int(rng.integers(num_classes))
                for suffix, data in (("cls", str(label).encode()), ("jpg", coloured_jpeg(rng, colours[label]))):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                written.append((key, label))
    return written


def tiny_model_file(path: Path, num_classes: int, name: str = "resnext_micro", seed: int = 0) -> Path:
    """A plain state-dict .pth of a random ``name`` model with a ``num_classes``-way head."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes, zero_init_residual=False)
    torch.save(model.state_dict(), path)
    return path


def colour_task(tmp_path: Path, train_per_class: int, val_per_class: int,
                model: str = "resnext_micro") -> tuple[Path, Path, Path]:
    """(train ImageFolder, val ImageFolder, a 10-way tiny ``model`` file to start from) for 3 colours."""
    names = ("red", "green", "blue")
    train = image_folder(tmp_path / "train", {name: train_per_class for name in names}, seed=0)
    val = image_folder(tmp_path / "val", {name: val_per_class for name in names}, seed=1)
    return train, val, tiny_model_file(tmp_path / "pretrained.pth", num_classes=10, name=model)
