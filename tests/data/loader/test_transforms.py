"""Transforms on encoded bytes (data/loader/transforms.py), on real and test-made JPEGs."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, RandomResizedCrop, Resize

from data.images.decode import ImageSkip, convert
from data.loader.transforms import (EvalTransform, TrainTransform, _draft, centre_crop_box,
                                     random_resized_crop_box)
from tests.shard_factory import photo_like


def _real_photos(shared_data, count: int = 40) -> list[bytes]:
    imagenet = sorted((shared_data / "imagenet_samples").glob("*.JPEG"))[:count // 2]
    ants = sorted((shared_data / "hymenoptera" / "hymenoptera_data" / "train").glob("*/*.jpg"))[:count // 2]
    return [p.read_bytes() for p in imagenet + ants]


def _mad(a, b) -> float:
    """Mean absolute difference of two uint8 images (tensors or arrays of the same layout)."""
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.parametrize("transform", [TrainTransform(56), EvalTransform(56, 64), TrainTransform(224),
                                       EvalTransform(224, 256)])
def test_output_is_uint8_square_rgb(transform):
    rng = np.random.default_rng(0)
    for size in [(80, 64), (64, 300), (1, 1), (500, 375)]:
        out = transform(photo_like(rng, *size), rng)
        assert out.shape == (3, transform.size, transform.size) and out.dtype == torch.uint8


def test_grayscale_and_png_become_rgb():
    rng = np.random.default_rng(1)
    gray = io.BytesIO()
    Image.open(io.BytesIO(photo_like(rng, 90, 70))).convert("L").save(gray, "JPEG")
    png = io.BytesIO()
    Image.open(io.BytesIO(photo_like(rng, 90, 70))).convert("RGBA").save(png, "PNG")
    for data in (gray.getvalue(), png.getvalue()):
        assert TrainTransform(32)(data, rng).shape == (3, 32, 32)


def test_draft_path_matches_decode_then_resize_on_real_photos(shared_data):
    """The documented tolerance: reduced-scale DCT decoding vs full decode + bilinear, same box."""
    photos = _real_photos(shared_data)
    for size, per_image_limit, mean_limit in [(56, 10.0, 3.0), (224, 5.0, 0.5)]:
        for fast in (TrainTransform(size), EvalTransform(size, round(size * 256 / 224))):
            exact = type(fast)(**{**fast.__dict__, "draft": False})
            diffs = [_mad(fast(p, np.random.default_rng(i)), exact(p, np.random.default_rng(i)))
                     for i, p in enumerate(photos)]
            assert max(diffs) < per_image_limit, (size, type(fast).__name__, max(diffs))
            assert np.mean(diffs) < mean_limit, (size, type(fast).__name__, np.mean(diffs))


def test_draft_decodes_large_jpeg_at_reduced_scale():
    data = photo_like(np.random.default_rng(2), 2000, 1500)
    image = Image.open(io.BytesIO(data))
    box = centre_crop_box(2000, 1500, 256, 224)
    scaled = _draft(image, box, 224)
    assert image.size == (500, 375)  # 1/4: the box (1312 px) still spans >= 224 px at that scale
    assert scaled[2] - scaled[0] >= 224 and scaled == pytest.approx(tuple(v / 4 for v in box))
    out, exact = EvalTransform(224, 256)(data), EvalTransform(224, 256, draft=False)(data)
    assert _mad(out, exact) < 2.0


def test_eval_is_deterministic_and_matches_torchvision(shared_data):
    transform = EvalTransform(224, 256)
    reference = Compose([Resize(256), CenterCrop(224)])
    for data in _real_photos(shared_data, 10):
        ours = transform(data)
        assert torch.equal(ours, transform(data))
        theirs = np.asarray(reference(Image.open(io.BytesIO(data)).convert("RGB"))).transpose(2, 0, 1)
        assert _mad(ours, theirs) < 1.5  # the same box; resize-then-crop vs crop-and-resize edges


def test_train_crop_box_distribution_matches_torchvision():
    """Area fraction and log aspect ratio of 4000 boxes each: means within 0.02 (the standard
    error of each mean is about 0.005), fallback rate the same within 0.02."""
    width, height, n = 500, 200, 4000
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    ours = np.array([random_resized_crop_box(width, height, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(n)])
    image = torch.zeros(3, height, width)
    theirs = np.array([[j, i, w, h] for i, j, h, w in
                       (RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n))])
    for boxes in (ours, theirs):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= height).all()

    def stats(boxes):
        area = boxes[:, 2] * boxes[:, 3] / (width * height)
        return area.mean(), np.log(boxes[:, 2] / boxes[:, 3]).mean(), (boxes[:, 3] == height).mean()

    for a, b in zip(stats(ours), stats(theirs)):
        assert abs(a - b) < 0.02


def test_train_crop_equals_torchvision_resized_crop_of_the_decoded_image(shared_data):
    """The train path cuts the box out in Pillow, resizes a channels-last tensor and flips; the
    oracle is torchvision's resized_crop (antialiased bilinear) + hflip of the whole decoded image
    with the same box, on real photos as stored and as the shard builder re-encodes them (with the
    restart markers that let only the box's columns be decoded): the same pixels, exactly."""
    from torchvision.transforms.v2 import functional as F

    transform = TrainTransform(112, draft=False)
    flips = 0
    photos = _real_photos(shared_data, 12)
    for i, data in enumerate(photos + [convert(data).jpeg for data in photos]):
        (left, top, right, bottom), flip = transform.box(*Image.open(io.BytesIO(data)).size, np.random.default_rng(i))
        flips += flip
        decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1).contiguous()
        theirs = F.resized_crop(decoded, top, left, bottom - top, right - left, [112, 112], antialias=True)
        theirs = F.horizontal_flip(theirs) if flip else theirs
        assert torch.equal(transform(data, np.random.default_rng(i)), theirs), i
    assert 0 < flips < 24


def test_batches_are_channels_last_copies_of_the_images():
    from data.loader.transforms import stack_images

    rng = np.random.default_rng(11)
    images = [TrainTransform(40)(photo_like(rng, 90, 70), rng) for _ in range(5)]
    batch = stack_images(images)
    assert batch.shape == (5, 3, 40, 40) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(batch[i], image) for i, image in enumerate(images))


def test_train_stream_is_reproducible_and_flips():
    data = photo_like(np.random.default_rng(4), 120, 90)
    transform = TrainTransform(48)
    first = [transform(data, np.random.default_rng(7)) for _ in range(2)]
    assert torch.equal(*first)
    rng = np.random.default_rng(8)
    boxes = [transform.box(120, 90, rng) for _ in range(400)]
    assert 0.4 < np.mean([flip for _, flip in boxes]) < 0.6  # binomial sd 0.025
    assert not any(flip for _, flip in (TrainTransform(48, flip=False).box(120, 90, rng) for _ in range(50)))


def test_bad_bytes_raise_named_skips():
    good = photo_like(np.random.default_rng(5), 80, 64)
    transform = TrainTransform(32)
    cases = {"corrupt": good[:3] + b"\x00" * 200, "truncated": good[: len(good) // 2],
             "unsupported_format": b"this is not an image at all",
             "too_many_pixels": None}
    for reason, data in cases.items():
        with pytest.raises(ImageSkip) as info:
            if data is None:
                TrainTransform(32, max_pixels=80 * 64 - 1)(good, np.random.default_rng(0))
            else:
                transform(data, np.random.default_rng(0))
        assert info.value.reason == reason


def test_pixel_limit_is_checked_from_the_header():
    """A JPEG whose header claims 40000x40000 is refused before any pixel is decoded."""
    data = bytearray(photo_like(np.random.default_rng(10), 80, 64))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    data[sof + 5: sof + 9] = (40000).to_bytes(2, "big") * 2
    for transform in (TrainTransform(32), EvalTransform(32, 36)):
        with pytest.raises(ImageSkip) as info:
            transform(bytes(data), np.random.default_rng(0))
        assert info.value.reason == "too_many_pixels"


BOMBS = ["sharp_fixtures/giant-image.jpg", "sharp_fixtures/65536-uint32-limit.png",
         "pillow_edge_cases/decompression_bomb.gif", "pillow_edge_cases/bmp_reallybig.bmp"]


def test_every_edge_case_image_gives_pixels_or_a_named_skip(shared_data):
    folder = shared_data / "image_edge_cases"
    transform = TrainTransform(32)
    reasons = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in (".md", ".txt")):
        try:
            out = transform(path.read_bytes(), np.random.default_rng(0))
            assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        except ImageSkip as skip:
            reasons[str(path.relative_to(folder))] = skip.reason
    for bomb in BOMBS:
        if (folder / bomb).exists():
            assert reasons[bomb] == "too_many_pixels", bomb
