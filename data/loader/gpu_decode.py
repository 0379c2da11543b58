"""Batched JPEG decoding on the training device (nvJPEG through ``torchvision.io.decode_jpeg``).

Selected with ``LoaderConfig(decode="cuda")`` (or ``"auto"`` when CUDA is present). Workers then
read the header only: they check the pixel limit and choose each image's crop box and flip exactly
as the CPU path does (:func:`data.loader.transforms.header_box`), and ship the raw bytes; this module
decodes the whole batch in one call on the device, then crops and resizes each image there
(bilinear, antialiased). An image the device decoder rejects (a CMYK or 12-bit JPEG, a PNG) is
decoded on the CPU with the same box; one that the CPU cannot decode either is dropped from the
batch and counted. The same code runs with ``device="cpu"`` (libjpeg-turbo), which is how it is
tested on machines without a GPU. Throughput: not measured on GPU (docs/loader.md).
"""
from __future__ import annotations

import warnings

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from data.images.decode import DEFAULT_MAX_PIXELS, ImageSkip, open_untrusted
from data.loader.transforms import Box, crop_resize, crop_resize_tensor


def decode_batch(jpegs: list[bytes], boxes: list[Box], flips: list[bool], size: int,
                 device: torch.device | str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 ) -> tuple[torch.Tensor, list[int], list[ImageSkip]]:
    """``(images N' x 3 x size x size uint8 on device, kept indices, skips)``; ``max_pixels`` is the
    limit the workers checked, applied again to the images decoded on the CPU."""
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
               for data in jpegs]
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec, once per call;
        # they are still the batched nvJPEG entry point, and one warning per batch floods the log.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB,
                                                                  device=device))
        except RuntimeError:
            decoded = [_decode_one(data, device) for data in encoded]
    out, kept, skips = [], [], []
    for i, image in enumerate(decoded):
        try:
            out.append(crop_resize_tensor(image, boxes[i], flips[i], size) if image is not None
                       else _cpu_fallback(jpegs[i], boxes[i], flips[i], size, device, max_pixels))
            kept.append(i)
        except ImageSkip as skip:
            skips.append(skip)
    images = torch.stack(out) if out else torch.empty(0, 3, size, size, dtype=torch.uint8, device=device)
    return images, kept, skips


def _decode_one(data: torch.Tensor, device: torch.device | str) -> torch.Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _cpu_fallback(data: bytes, box: Box, flip: bool, size: int, device: torch.device | str,
                  max_pixels: int) -> torch.Tensor:
    with open_untrusted(data, max_pixels) as image:
        image.load()
        pixels = crop_resize(image, box, flip, size)
    return pixels.to(device)
