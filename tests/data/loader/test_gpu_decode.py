"""Batched device decoding (data/loader/gpu_decode.py), run with device='cpu': the same calls as on a GPU."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from data.loader.gpu_decode import decode_batch
from data.loader.transforms import TrainTransform, header_box
from tests.shard_factory import photo_like


def _mad(a, b) -> float:
    """Mean absolute difference of two uint8 images (tensors or arrays of the same layout)."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def test_device_decode_path_matches_cpu_path():
    """The GPU path's code, run with device='cpu': same boxes, close pixels, bad images dropped."""
    rng = np.random.default_rng(6)
    transform = TrainTransform(40)
    jpegs = [photo_like(rng, 120, 90) for _ in range(5)]
    png = io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, "PNG")
    jpegs += [png.getvalue(), b"\xff\xd8\xff garbage"]
    boxes, flips = [], []
    for data in jpegs[:-1]:
        box, flip = header_box(data, transform, np.random.default_rng(len(boxes)))
        boxes.append(box)
        flips.append(flip)
    boxes.append((0, 0, 10, 10))
    flips.append(False)
    images, kept, skips = decode_batch(jpegs, boxes, flips, 40, "cpu")
    assert kept == [0, 1, 2, 3, 4, 5] and [s.reason for s in skips] == ["corrupt"]
    assert images.shape == (6, 3, 40, 40) and images.dtype == torch.uint8
    full_decode = TrainTransform(40, draft=False)  # the device decodes at full scale
    for i in range(6):
        cpu = full_decode(jpegs[i], np.random.default_rng(i))
        assert _mad(images[i], cpu) < 1.0
