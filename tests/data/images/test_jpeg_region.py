"""Region-limited, optionally DCT-scaled JPEG decoding (data/images/jpeg_region.py) against
Pillow's decode of the untouched bytes: the oracle is Pillow (libjpeg-turbo), the files are real
photos (as stored and as the shard builder re-encodes them, with restart markers), the
libjpeg-turbo and sharp test images, and JPEGs written here with Pillow's encoder options."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from data.images import jpeg_region
from data.images.decode import ImageSkip, convert, open_untrusted
from data.loader.transforms import TrainTransform, _decode_box_region
from tests.shard_factory import photo_like


def _real_jpegs(shared_data, count: int = 30) -> list[bytes]:
    imagenet = sorted((shared_data / "imagenet_samples").glob("*.JPEG"))[:count // 2]
    ants = sorted((shared_data / "hymenoptera" / "hymenoptera_data" / "train").glob("*/*.jpg"))[:count // 2]
    return [p.read_bytes() for p in imagenet + ants]


def _encoded(rng, width, height, **options) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(photo_like(rng, width, height))).save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _rows(data: bytes, frame, bottom: int, eighths: int = 8) -> np.ndarray:
    """The rows a box of full width down to ``bottom`` gets (no restart markers: rows only)."""
    pixels, x0, y0 = jpeg_region.decode_region(data, frame, (0, 0, frame.width, bottom), eighths)
    assert (x0, y0) == (0, 0)
    return pixels


def _pillow_rgb(data: bytes, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if reduce_to is not None:
        image.draft("RGB", reduce_to)
    return np.asarray(image.convert("RGB"))


def test_top_rows_equal_a_full_pillow_decode_on_real_photos(shared_data):
    photos = _real_jpegs(shared_data)
    for data in photos:
        frame = jpeg_region.sequential_frame(data)
        assert frame is not None  # the real photos here are all baseline YCbCr
        full = _pillow_rgb(data)
        assert (frame.width, frame.height) == (full.shape[1], full.shape[0])
        for bottom in (1, frame.mcu_height, frame.mcu_height + 1, frame.height // 3, frame.height - 1, frame.height):
            rows = _rows(data, frame, bottom)
            assert rows is not None and rows.shape[0] >= bottom and rows.shape[1] == frame.width
            assert np.array_equal(rows[:bottom], full[:bottom]), bottom
        # fewer rows decoded than the frame has, for a box in the top third
        assert _rows(data, frame, frame.height // 3).shape[0] < frame.height


@pytest.mark.parametrize("options", [{"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2},
                                     {"restart_marker_rows": 1}, {"optimize": True}])
def test_sampling_factors_restart_markers_and_optimised_tables(options):
    data = _encoded(np.random.default_rng(1), 301, 203, **options)
    frame = jpeg_region.sequential_frame(data)
    assert frame.mcu_height == {0: 8, 1: 8, 2: 16}.get(options.get("subsampling", 2), 16)
    full = _pillow_rgb(data)
    for bottom in (5, 64, 150, 203):
        rows = _rows(data, frame, bottom)
        assert np.array_equal(rows[:bottom], full[:bottom]), (options, bottom)


@pytest.mark.parametrize("eighths", [4, 2, 1])
def test_reduced_scale_rows_equal_pillows_draft_decode(eighths):
    """At 1/2, 1/4 and 1/8 the rows equal Pillow's draft (libjpeg's DCT scaling) of the whole file."""
    data = _encoded(np.random.default_rng(2), 800, 600)
    frame = jpeg_region.sequential_frame(data)
    reduced = _pillow_rgb(data, (math.ceil(800 * eighths / 8), math.ceil(600 * eighths / 8)))
    assert reduced.shape[1] == math.ceil(800 * eighths / 8)
    for bottom in (40, 300, 600):
        rows = _rows(data, frame, bottom, eighths)
        need = math.ceil(bottom * eighths / 8)
        assert rows.shape[1] == reduced.shape[1] and rows.shape[0] >= need
        assert np.array_equal(rows[:need], reduced[:need]), (eighths, bottom)


def test_scale_is_the_smallest_power_of_two_the_box_allows():
    assert jpeg_region.scale_for(448, 500, 224) == 4
    assert jpeg_region.scale_for(447, 500, 224) == 8
    assert jpeg_region.scale_for(1792, 1800, 224) == 1
    assert jpeg_region.scale_for(900, 1000, 224) == 2


def test_frames_the_fast_path_leaves_to_pillow():
    rng = np.random.default_rng(3)
    progressive = _encoded(rng, 120, 90, progressive=True)
    gray, cmyk = io.BytesIO(), io.BytesIO()
    Image.open(io.BytesIO(photo_like(rng, 120, 90))).convert("L").save(gray, "JPEG")
    Image.open(io.BytesIO(photo_like(rng, 120, 90))).convert("CMYK").save(cmyk, "JPEG")
    for data in (progressive, gray.getvalue(), cmyk.getvalue(), b"not a jpeg", b"\xff\xd8\xff"):
        assert jpeg_region.sequential_frame(data) is None
    good = _encoded(rng, 120, 90)
    frame = jpeg_region.sequential_frame(good)
    assert jpeg_region.decode_region(good[: len(good) // 2], frame, (0, 0, 5, 10)) is None  # truncated: no EOI
    assert jpeg_region.decode_region(good + b"trailing junk", frame, (0, 0, 5, 10)) is None


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
            fast += jpeg_region.sequential_frame(data) is not None
    assert fast >= 5  # the comparison exercised the row-limited path


def test_fast_path_is_taken_for_train_crops_of_real_photos(shared_data):
    photos = _real_jpegs(shared_data, 20)
    for data in photos:
        image = Image.open(io.BytesIO(data))
        box, flip = TrainTransform(56).box(*image.size, np.random.default_rng(0))
        assert _decode_box_region(data, image.size, box, flip, 56, draft=True) is not None


def _boxes(width: int, height: int, seed: int, count: int = 12) -> list[tuple[int, int, int, int]]:
    """Train-crop boxes, the four corners' 1-pixel boxes and the whole frame."""
    rng, boxes = np.random.default_rng(seed), []
    for _ in range(count):
        (left, top, right, bottom), _ = TrainTransform(64).box(width, height, rng)
        boxes.append((int(left), int(top), int(right), int(bottom)))
    corners = [(0, 0, 1, 1), (width - 1, 0, width, 1), (0, height - 1, 1, height),
               (width - 1, height - 1, width, height), (0, 0, width, height)]
    # edges on, and one or two pixels either side of, the MCU (and restart interval) boundaries
    near = [(16 * k + d, 16 * k + d, min(width, 16 * k + d + 40 + e), min(height, 16 * k + d + 40 + e))
            for k in (1, 2, 4) for d in (-2, -1, 0, 1, 2) for e in (-1, 0, 1) if 16 * k + d + 41 < min(width, height)]
    return boxes + corners + near


def _region_equals(data: bytes, reference: np.ndarray, box, eighths: int = 8) -> tuple[int, int, int, int]:
    """Asserts the region's pixels over ``box`` (its whole-pixel hull at a reduced scale) equal the
    reference decode's; returns the region's (x0, y0, width, height) in source pixels."""
    frame = jpeg_region.sequential_frame(data)
    pixels, x0, y0 = jpeg_region.decode_region(data, frame, box, eighths)
    s = eighths / 8
    left, top = math.floor(box[0] * s), math.floor(box[1] * s)
    right, bottom = math.ceil(box[2] * s), math.ceil(box[3] * s)
    ox, oy = int(x0 * s), int(y0 * s)
    assert oy <= top and ox <= left and bottom - oy <= pixels.shape[0] and right - ox <= pixels.shape[1], box
    assert np.array_equal(pixels[top - oy:bottom - oy, left - ox:right - ox], reference[top:bottom, left:right]), box
    return x0, y0, round(pixels.shape[1] / s), round(pixels.shape[0] / s)


def test_regions_of_builder_jpegs_equal_a_full_pillow_decode(shared_data):
    """The shard builder's re-encoding (restart markers every ~64 px, every MCU row starting an
    interval): each box's pixels equal Pillow's decode of the whole file, and a box in the middle
    leaves rows above and columns on both sides undecoded."""
    cut = 0
    for data in _real_jpegs(shared_data, 20):
        stored = convert(data).jpeg
        frame = jpeg_region.sequential_frame(stored)
        assert frame.restart_interval > 0 and math.ceil(frame.width / frame.mcu_width) % frame.restart_interval == 0
        full = _pillow_rgb(stored)
        for box in _boxes(frame.width, frame.height, len(stored)):
            x0, y0, width, height = _region_equals(stored, full, box)
            cut += x0 > 0 and y0 > 0 and x0 + width < frame.width and y0 + height < frame.height
        middle = (frame.width // 3, frame.height // 3, 2 * frame.width // 3, 2 * frame.height // 3)
        x0, y0, width, height = _region_equals(stored, full, middle)
        assert x0 > 0 and y0 > 0 and width < 0.7 * frame.width and height < 0.7 * frame.height
    assert cut >= 20  # train crops away from every edge took the column path


@pytest.mark.parametrize("subsampling, mcu_width", [(0, 8), (1, 16), (2, 16)])
def test_regions_at_every_sampling_and_odd_sizes(subsampling, mcu_width):
    """4:4:4, 4:2:2 and 4:2:0 frames whose width and height are not whole MCUs."""
    for width, height in ((301, 203), (517, 288)):
        rng = np.random.default_rng(width)
        data = _encoded(rng, width, height, subsampling=subsampling,
                        restart_marker_blocks=jpeg_region.restart_blocks(width, mcu_width))
        assert jpeg_region.sequential_frame(data).mcu_width == mcu_width
        full = _pillow_rgb(data)
        for box in _boxes(width, height, subsampling, 30):
            _region_equals(data, full, box)


@pytest.mark.parametrize("eighths", [4, 2, 1])
def test_reduced_scale_regions_equal_pillows_draft_decode(eighths):
    width, height = 1000, 760
    data = _encoded(np.random.default_rng(4), width, height, restart_marker_blocks=jpeg_region.restart_blocks(width))
    reduced = _pillow_rgb(data, (math.ceil(width * eighths / 8), math.ceil(height * eighths / 8)))
    for box in _boxes(width, height, eighths, 20):
        _region_equals(data, reduced, box, eighths)


def test_restart_markers_that_do_not_start_every_row_decode_rows_only():
    """An interval that does not divide a row's MCUs (19 MCUs, every 5), one per row, and a DRI
    segment that does not match the markers in the scan: rows only (or the row path), same pixels."""
    width, height = 301, 203  # 19 x 13 MCUs at 4:2:0
    rng = np.random.default_rng(5)
    for options in ({"restart_marker_blocks": 5}, {"restart_marker_rows": 1}):
        data = _encoded(rng, width, height, **options)
        full = _pillow_rgb(data)
        for box in _boxes(width, height, 5):
            x0, _, region_width, _ = _region_equals(data, full, box)
            if "restart_marker_blocks" in options:
                assert (x0, region_width) == (0, width)
    frame = jpeg_region.sequential_frame(_encoded(rng, width, height, restart_marker_rows=1))
    assert frame.restart_interval == 19
    lying = jpeg_region.Frame(**{**frame.__dict__, "restart_interval": 1})  # 1 MCU claimed, markers every 19
    data = _encoded(rng, width, height, restart_marker_rows=1)
    assert jpeg_region._restart_region(data, lying, (50, 50, 100, 100), 8) is None


def test_restart_interval_divides_the_row():
    assert jpeg_region.restart_blocks(384) == 4  # 24 MCUs
    assert jpeg_region.restart_blocks(288) == 3  # 18 MCUs: 3 is nearer 4 than 6
    assert jpeg_region.restart_blocks(432) == 3  # 27 MCUs
    assert jpeg_region.restart_blocks(368) == 1  # 23 MCUs, a prime
    assert jpeg_region.restart_blocks(90) == 3  # 6 MCUs (the last one partial)
    assert jpeg_region.restart_blocks(240) == 5  # 15 MCUs: 3 and 5 tie, the larger wins
    assert jpeg_region.restart_blocks(300, mcu_width=8) == 2  # 38 MCUs of 4:4:4
