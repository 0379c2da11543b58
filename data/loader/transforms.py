"""Image transforms on encoded bytes: JPEG/PNG/... bytes in, a uint8 ``3 x S x S`` tensor out.

Train: RandomResizedCrop (torchvision's sampling of scale and aspect ratio, 10 tries then a centre
fallback) + horizontal flip. Eval: resize the short side to ``resize`` + centre crop ``size``.
Both choose their box from the image *header* before any pixel is decoded, which buys two things:

- the pixel-count limit is enforced before decoding (hostile headers cost nothing);
- a JPEG is decoded at a reduced DCT scale (PIL ``draft``: 1/2, 1/4 or 1/8) whenever the box still
  has at least the output size in pixels at that scale; only the box's pixels are then copied out
  of Pillow and resized (torchvision's uint8 bilinear kernel, antialiased);
- a train crop (a whole-pixel box) of a sequential RGB JPEG, which is what the shard builder
  writes, is decoded by libjpeg-turbo's own API only over the box's region
  (:mod:`data.images.jpeg_region`: its rows, and its columns too when the file has the restart
  markers the builder writes): the same pixels as Pillow's decode, ~40 % of its CPU;
  Pillow still opens every image first and decodes whatever that path leaves. The result equals
  decode-then-crop-then-resize up to the difference between libjpeg's DCT downscale and a bilinear
  downscale: on real photos tests/data/loader/test_transforms.py measures a mean absolute difference
  below 3 grey levels (of 255) at 56 px output and below 0.5 at 224 px, where the draft rarely
  applies.

No float conversion and no normalisation: uint8 leaves the worker (4x less to copy between
processes), and the trainer normalises on its device. Images and batches are channels-last in
memory (NHWC strides), the layout torch's uint8 resize works in and the trainer's convolutions
want, so no stage transposes pixels. Images in openwsl shards are upright RGB
(the shard builder applies EXIF orientation), so orientation is not re-applied here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as F

from data.images import jpeg_region
from data.images.decode import DEFAULT_MAX_PIXELS, open_untrusted, to_rgb

#: a crop box in source pixels: (left, top, right, bottom)
Box = tuple[float, float, float, float]


class Transform(Protocol):
    size: int

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[Box, bool]:
        """The source box to crop and whether to flip it, from the header size alone."""

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        """The ``3 x size x size`` uint8 pixels of the transformed image."""


@dataclass(frozen=True)
class TrainTransform:
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[Box, bool]:
        left, top, w, h = random_resized_crop_box(width, height, self.scale, self.ratio, rng)
        flip = bool(self.flip and rng.random() < 0.5)
        return (left, top, left + w, top + h), flip

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        return decode_crop(data, self, rng)


@dataclass(frozen=True)
class EvalTransform:
    size: int = 224
    resize: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True

    def box(self, width: int, height: int, rng: np.random.Generator | None = None) -> tuple[Box, bool]:
        return centre_crop_box(width, height, self.resize, self.size), False

    def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> torch.Tensor:
        return decode_crop(data, self, rng)


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float],
                            ratio: tuple[float, float], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` drawn as torchvision's ``RandomResizedCrop.get_params`` draws it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # Fallback: the whole image, clipped to the allowed aspect range, centred.
    aspect = width / height
    w, h = width, height
    if aspect < min(ratio):
        h = int(round(width / min(ratio)))
    elif aspect > max(ratio):
        w = int(round(height * max(ratio)))
    return (width - w) // 2, (height - h) // 2, w, h


def centre_crop_box(width: int, height: int, resize: int, size: int) -> Box:
    """The source box that torchvision's ``Resize(resize)`` then ``CenterCrop(size)`` keep (its
    integer rounding of the resized side and of the crop offset included)."""
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    sx, sy = width / new_w, height / new_h
    crop_w, crop_h = min(size, new_w), min(size, new_h)
    left, top = int(round((new_w - crop_w) / 2.0)), int(round((new_h - crop_h) / 2.0))
    return left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy


def decode_crop(data: bytes, transform: Transform, rng: np.random.Generator | None) -> torch.Tensor:
    """Open ``data``, check its pixel count, pick the box, decode (at reduced scale when the box
    allows), crop, resize and flip. Raises :class:`~data.images.decode.ImageSkip` for anything
    unusable (:func:`~data.images.decode.open_untrusted`)."""
    with open_untrusted(data, getattr(transform, "max_pixels", DEFAULT_MAX_PIXELS)) as image:
        box, flip = transform.box(*image.size, rng)
        size = transform.size
        draft = getattr(transform, "draft", True)
        if image.format == "JPEG" and image.mode == "RGB" and _is_whole(box):
            out = _decode_box_region(data, image.size, box, flip, size, draft)
            if out is not None:
                return out
        if draft and image.format == "JPEG":
            box = _draft(image, box, size)
        image.load()
        return crop_resize(image, box, flip, size)


def _is_whole(box: Box) -> bool:
    return all(float(v).is_integer() for v in box)


def _decode_box_region(data: bytes, image_size: tuple[int, int], box: Box, flip: bool, size: int,
                       draft: bool) -> torch.Tensor | None:
    """A whole-pixel box (a train crop) of a sequential RGB JPEG, decoded by libjpeg-turbo over the
    box's region only (:mod:`data.images.jpeg_region`), at the smallest power-of-two DCT scale the
    box allows when ``draft``; ``None`` when that path does not apply (Pillow then decodes, as
    before). At full scale the pixels equal the Pillow path's exactly."""
    frame = jpeg_region.sequential_frame(data)
    if frame is None or (frame.width, frame.height) != image_size:
        return None
    left, top, right, bottom = _whole_pixels(box)
    eighths = jpeg_region.scale_for(right - left, bottom - top, size) if draft else 8
    region = jpeg_region.decode_region(data, frame, (left, top, right, bottom), eighths)
    if region is None:
        return None
    pixels, x0, y0 = region
    left, top, right, bottom = left - x0, top - y0, right - x0, bottom - y0  # in the region
    if eighths == 8:
        crop = np.ascontiguousarray(pixels[top:bottom, left:right])  # the box only, as crop_pixels
        return resize_flip(torch.from_numpy(crop).permute(2, 0, 1), flip, size)
    # Reduced scale: the box is fractional there; cut its whole-pixel hull and let Pillow's resize
    # honour the fraction, as the draft path does.
    s = eighths / 8
    scaled = (left * s, top * s, right * s, bottom * s)
    x0, y0 = math.floor(scaled[0]), math.floor(scaled[1])
    x1, y1 = min(math.ceil(scaled[2]), pixels.shape[1]), min(math.ceil(scaled[3]), pixels.shape[0])
    hull = Image.fromarray(pixels[y0:y1, x0:x1])
    out = hull.resize((size, size), Image.Resampling.BILINEAR,
                      box=(scaled[0] - x0, scaled[1] - y0, min(scaled[2], x1) - x0, min(scaled[3], y1) - y0))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)


def crop_resize(image: Image.Image, box: Box, flip: bool, size: int) -> torch.Tensor:
    """``box`` of a loaded image, resized to ``size x size`` and flipped; ``3 x size x size`` uint8.
    Whole-pixel boxes (train crops) are cut out by Pillow (only the box's pixels are copied out of
    Pillow's storage) and resized by torchvision's uint8 kernel, about twice as fast as Pillow's
    bilinear resize here; fractional boxes (the eval crop, draft-scaled boxes) take Pillow's
    resize, which honours the fraction, so the eval crop equals torchvision's Resize + CenterCrop."""
    rgb = to_rgb(image)
    if _is_whole(box):
        return resize_flip(crop_pixels(rgb, box), flip, size)
    out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)


def crop_pixels(rgb: Image.Image, box: Box) -> torch.Tensor:
    """The pixels of ``box`` (rounded to whole pixels, at least one) of a loaded RGB image, as a
    ``3 x h x w`` uint8 tensor (channels-last in memory, the layout torch's uint8 resize wants).
    Cropping before the copy out of Pillow moves only the box: on average 42% of a 288 px image
    under RandomResizedCrop's default scale."""
    left, top, right, bottom = _whole_pixels(box)
    return torch.from_numpy(np.array(rgb.crop((left, top, right, bottom)))).permute(2, 0, 1)


def crop_resize_tensor(pixels: torch.Tensor, box: Box, flip: bool, size: int) -> torch.Tensor:
    """``box`` (rounded to whole pixels) of ``3 x H x W`` uint8 pixels, on any device, resized to
    ``size x size`` (bilinear, antialiased when shrinking) and flipped."""
    left, top, right, bottom = _whole_pixels(box)
    return resize_flip(pixels[:, top:bottom, left:right], flip, size)


def resize_flip(pixels: torch.Tensor, flip: bool, size: int) -> torch.Tensor:
    """``3 x h x w`` uint8 pixels resized to ``size x size`` by torchvision's resize (bilinear,
    antialiased when shrinking; torch's native uint8 kernel on the CPU), then flipped."""
    out = F.resize(pixels, [size, size], antialias=True)
    return out.flip(-1) if flip else out


def _whole_pixels(box: Box) -> tuple[int, int, int, int]:
    left, top, right, bottom = (int(round(v)) for v in box)
    return left, top, max(right, left + 1), max(bottom, top + 1)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """The ``N x 3 x S x S`` uint8 batch of ``images``, in channels-last memory (the layout the
    resize leaves each image in, and the one the trainer feeds its convolutions), so stacking is a
    plain copy of each image. Inside a DataLoader worker ``default_collate`` writes the batch
    straight into shared memory, so handing it to the training process copies nothing more."""
    return default_collate([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def header_box(data: bytes, transform: Transform, rng: np.random.Generator | None) -> tuple[Box, bool]:
    """The box and flip ``transform`` would use, from the header alone (the device-decode path:
    workers choose boxes, the GPU decodes). Raises ``ImageSkip`` like :func:`decode_crop`."""
    with open_untrusted(data, getattr(transform, "max_pixels", DEFAULT_MAX_PIXELS)) as image:
        return transform.box(*image.size, rng)


def _draft(image: Image.Image, box: Box, size: int) -> Box:
    """Ask libjpeg for the smallest DCT scale at which ``box`` still spans ``size`` pixels; returns
    the box in the reduced image's coordinates."""
    width, height = image.size
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    request = (math.ceil(width * size / box_w), math.ceil(height * size / box_h))
    image.draft("RGB", request)
    sx, sy = image.size[0] / width, image.size[1] / height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
