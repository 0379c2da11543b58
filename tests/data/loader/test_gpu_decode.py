"""Batched device decoding (data/loader/gpu_decode.py): with device='cpu', the same calls as on a GPU;
the cuda-marked tests run them with nvJPEG (scripts/gpu_check.py) against the CPU decoder."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from data.images.decode import ImageSkip
from data.loader.gpu_decode import decode_batch
from data.loader.transforms import TrainTransform, header_box
from tests.shard_factory import photo_like, simple_shards


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


# -- on a GPU (nvJPEG) ----------------------------------------------------------------------------
# torchvision's own test of its GPU decoder (test/test_image.py, test_decode_jpegs_cuda) accepts a
# mean absolute difference below 2 levels against its CPU decoder (libjpeg-turbo): the IDCT and the
# chroma upsampling differ. The same tolerance here, on whole images and after the loader's crop.
MAX_MAD = 2.0
NOT_AN_IMAGE = {".md", ".txt", ".ijg"}


def _shard_jpegs(root: Path) -> list[bytes]:
    """The JPEG members of a real shard tar (288 px short side, as scripts/build_shards.py stores them)."""
    shards = simple_shards(root, [12], size=(384, 288))
    with tarfile.open(shards / "train-000000.tar") as tar:
        return [tar.extractfile(member).read() for member in tar.getmembers() if member.name.endswith(".jpg")]


def _boxes(jpegs: list[bytes], transform: TrainTransform) -> tuple[list, list]:
    chosen = [header_box(data, transform, np.random.default_rng(i)) for i, data in enumerate(jpegs)]
    return [box for box, _ in chosen], [flip for _, flip in chosen]


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision >= 0.29 points at TorchCodec
@pytest.mark.parametrize("source", ["shard", "photos"])
def test_nvjpeg_decodes_like_the_cpu_within_torchvisions_tolerance(source, tmp_path, request):
    """Shard bytes (and, where ../shared/data is present, real ImageNet photos, some greyscale):
    each image decoded by nvJPEG within MAX_MAD of libjpeg-turbo, and the loader's batch
    (decode_batch: same boxes and flips) on the GPU within MAX_MAD of the same call on the CPU."""
    if source == "shard":
        jpegs = _shard_jpegs(tmp_path)
    else:
        photos = sorted((request.getfixturevalue("shared_data") / "imagenet_samples").glob("*.JPEG"))
        if not photos:
            pytest.skip("no imagenet_samples/*.JPEG in the shared data")
        jpegs = [path.read_bytes() for path in photos[::5]]
    rejected = 0
    for data in jpegs:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        cpu = decode_jpeg(encoded, mode=ImageReadMode.RGB)
        try:
            gpu = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda")
        except RuntimeError:  # e.g. a CMYK photo: decode_batch falls back to the CPU for it
            rejected += 1
            continue
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        assert _mad(gpu.cpu(), cpu) < MAX_MAD
    assert rejected <= len(jpegs) // 10, f"nvJPEG rejected {rejected} of {len(jpegs)} images"

    boxes, flips = _boxes(jpegs, TrainTransform(224))
    on_gpu, kept_gpu, skips_gpu = decode_batch(jpegs, boxes, flips, 224, "cuda")
    on_cpu, kept_cpu, skips_cpu = decode_batch(jpegs, boxes, flips, 224, "cpu")
    assert kept_gpu == kept_cpu == list(range(len(jpegs))) and skips_gpu == skips_cpu == []
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (len(jpegs), 3, 224, 224) and on_gpu.dtype == torch.uint8
    for i in range(len(jpegs)):
        assert _mad(on_gpu[i].cpu(), on_cpu[i]) < MAX_MAD, i


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_gpu_path_keeps_and_drops_the_edge_case_files_the_cpu_path_does(shared_data):
    """Every edge-case file that passes the workers' header check (pixel limit, readable header),
    decoded as one batch on the GPU and on the CPU: the same files kept, the same skip reasons
    (what nvJPEG rejects, a CMYK or 12-bit JPEG, a PNG, goes through the CPU fallback)."""
    files = sorted(path for path in (shared_data / "image_edge_cases").rglob("*")
                   if path.is_file() and path.suffix.lower() not in NOT_AN_IMAGE)
    if not files:
        pytest.skip("no image_edge_cases in the shared data")
    transform, jpegs, boxes, flips = TrainTransform(64), [], [], []
    for i, path in enumerate(files):
        data = path.read_bytes()
        try:
            box, flip = header_box(data, transform, np.random.default_rng(i))
        except ImageSkip:
            continue  # refused by the worker: no decoder sees it
        jpegs.append(data)
        boxes.append(box)
        flips.append(flip)
    on_gpu, kept_gpu, skips_gpu = decode_batch(jpegs, boxes, flips, 64, "cuda")
    on_cpu, kept_cpu, skips_cpu = decode_batch(jpegs, boxes, flips, 64, "cpu")
    assert kept_gpu == kept_cpu and len(kept_gpu) >= len(jpegs) // 2
    assert [s.reason for s in skips_gpu] == [s.reason for s in skips_cpu]
    assert on_gpu.shape == on_cpu.shape == (len(kept_gpu), 3, 64, 64)
