"""Row-limited, optionally DCT-scaled JPEG decoding (data/images/jpeg_rows.py) against Pillow's
decode of the untouched bytes: the oracle is Pillow (libjpeg-turbo), the files are real photos,
the libjpeg-turbo and sharp test images, and JPEGs written here with Pillow's encoder options."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from data.images import jpeg_rows
from data.images.decode import ImageSkip, open_untrusted
from data.loader.transforms import TrainTransform, _decode_box_rows
from tests.shard_factory import photo_like


def _real_jpegs(shared_data, count: int = 30) -> list[bytes]:
    imagenet = sorted((shared_data / "imagenet_samples").glob("*.JPEG"))[:count // 2]
    ants = sorted((shared_data / "hymenoptera" / "hymenoptera_data" / "train").glob("*/*.jpg"))[:count // 2]
    return [p.read_bytes() for p in imagenet + ants]


def _encoded(rng, width, height, **options) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(photo_like(rng, width, height))).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _pillow_rgb(data: bytes, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if reduce_to is not None:
        image.draft("RGB", reduce_to)
    return np.asarray(image.convert("RGB"))


def test_top_rows_equal_a_full_pillow_decode_on_real_photos(shared_data):
    photos = _real_jpegs(shared_data)
    for data in photos:
        frame = jpeg_rows.sequential_frame(data)
        assert frame is not None  # the real photos here are all baseline YCbCr
        full = _pillow_rgb(data)
        assert (frame.width, frame.height) == (full.shape[1], full.shape[0])
        for bottom in (1, frame.mcu_rows, frame.mcu_rows + 1, frame.height // 3, frame.height - 1, frame.height):
            rows = jpeg_rows.decode_rows(data, frame, bottom)
            assert rows is not None and rows.shape[0] >= bottom and rows.shape[1] == frame.width
            assert np.array_equal(rows[:bottom], full[:bottom]), bottom
        # fewer rows decoded than the frame has, for a box in the top third
        assert jpeg_rows.decode_rows(data, frame, frame.height // 3).shape[0] < frame.height


@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2},
                                     {"restart_marker_rows": 1}, {"optimize": True}])
def test_sampling_factors_restart_markers_and_optimised_tables(options):
    data = _encoded(np.random.default_rng(1), 301, 203, **options)
    frame = jpeg_rows.sequential_frame(data)
    assert frame.mcu_rows == {0: 8, 1: 8, 2: 16}.get(options.get("subsampling", 2), 16)
    full = _pillow_rgb(data)
    for bottom in (5, 64, 150, 203):
        rows = jpeg_rows.decode_rows(data, frame, bottom)
        assert np.array_equal(rows[:bottom], full[:bottom]), (options, bottom)


@pytest.mark.parametrize("eighths", [4, 2, 1])
def test_reduced_scale_rows_equal_pillows_draft_decode(eighths):
    """At 1/2, 1/4 and 1/8 the rows equal Pillow's draft (libjpeg's DCT scaling) of the whole file."""
    data = _encoded(np.random.default_rng(2), 800, 600)
    frame = jpeg_rows.sequential_frame(data)
    reduced = _pillow_rgb(data, (math.ceil(800 * eighths / 8), math.ceil(600 * eighths / 8)))
    assert reduced.shape[1] == math.ceil(800 * eighths / 8)
    for bottom in (40, 300, 600):
        rows = jpeg_rows.decode_rows(data, frame, bottom, eighths)
        need = math.ceil(bottom * eighths / 8)
        assert rows.shape[1] == reduced.shape[1] and rows.shape[0] >= need
        assert np.array_equal(rows[:need], reduced[:need]), (eighths, bottom)


def test_scale_is_the_smallest_power_of_two_the_box_allows():
    assert jpeg_rows.scale_for(448, 500, 224) == 4
    assert jpeg_rows.scale_for(447, 500, 224) == 8
    assert jpeg_rows.scale_for(1792, 1800, 224) == 1
    assert jpeg_rows.scale_for(900, 1000, 224) == 2


def test_frames_the_fast_path_leaves_to_pillow():
    rng = np.random.default_rng(3)
    progressive = _encoded(rng, 120, 90, progressive=True)
    gray, cmyk = io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(photo_like(rng, 120, 90))).convert("L").save(gray, "JPEG")
    Image.open(io.BytesIO(photo_like(rng, 120, 90))).convert("CMYK").save(cmyk, "JPEG")
    for data in (progressive, gray.getvalue(), cmyk.getvalue(), b"not a jpeg", b"\xff\xd8\xff"):
        assert jpeg_rows.sequential_frame(data) is None
    good = _encoded(rng, 120, 90)
    frame = jpeg_rows.sequential_frame(good)
    assert jpeg_rows.decode_rows(good[: len(good) // 2], frame, 10) is None  # truncated: no EOI
    assert jpeg_rows.decode_rows(good + b"trailing junk", frame, 10) is None


def _oracle(data: bytes, transform: TrainTransform, seed: int) -> torch.Tensor | str:
    """torchvision's resized_crop + hflip of Pillow's full decode with the transform's box, or the
    skip reason Pillow's decode gives."""
    try:
        with open_untrusted(data, transform.max_pixels) as image:
            (left, top, right, bottom), flip = transform.box(*image.size, np.random.default_rng(seed))
            image.load()
            if image.format != "JPEG" or image.mode != "RGB":
                return "not this path"
            decoded = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    except ImageSkip as skip:
        return skip.reason
    out = F.resized_crop(decoded, top, left, bottom - top, right - left, [64, 64], antialias=True)
    return F.horizontal_flip(out) if flip else out


def test_train_crops_of_edge_case_jpegs_equal_the_pillow_path_or_skip_alike(shared_data):
    """Every JPEG among the libjpeg-turbo, sharp and Pillow test images: the fast path gives the
    oracle's pixels exactly, or the same counted skip; none of them changes skip semantics."""
    files = sorted(p for p in (shared_data / "image_edge_cases").rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg") and p.stat().st_size < 2**22)
    transform, fast = TrainTransform(64, draft=False), 0
    assert len(files) >= 10
    for path in files:
        data = path.read_bytes()
        for seed in range(2):
            expected = _oracle(data, transform, seed)
            if expected == "not this path":
                continue
            try:
                ours = transform(data, np.random.default_rng(seed))
            except ImageSkip as skip:
                assert skip.reason == expected, path
                continue
            assert isinstance(expected, torch.Tensor), (path, expected)
            assert torch.equal(ours, expected), path
            fast += jpeg_rows.sequential_frame(data) is not None
    assert fast >= 5  # the comparison exercised the row-limited path


def test_fast_path_is_taken_for_train_crops_of_real_photos(shared_data):
    photos = _real_jpegs(shared_data, 20)
    for data in photos:
        image = Image.open(io.BytesIO(data))
        box, flip = TrainTransform(56).box(*image.size, np.random.default_rng(0))
        assert _decode_box_rows(data, image.size, box, flip, 56, draft=True) is not None
