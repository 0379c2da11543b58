"""Memory a hostile sample cannot take: an oversized tar member, and an image cheap in pixels but
dear in decoded bytes.

- A training shard whose sample holds a 256 MiB image member (a sparse file: nothing is written
  for it on disk): the loader skips the sample as ``too_large`` without reading the member (peak
  RSS of the whole run within 64 MiB of the same run without it). Before, the member was read
  whole: a 1.5 GB member took the loader to 3.8 GB.
- A 16-bit RGBA PNG of 10000x9999 pixels (under the 100 M-pixel limit) that compresses to 760 KiB
  and took +1.3 GB to convert: refused from its header as ``too_many_pixels`` by the one image
  guard (data/images/decode.py ``open_untrusted``), for the shard builder and the loader alike,
  while an 8-bit RGB image of the same size still passes.
"""
from __future__ import annotations

import io
import json
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from data.images.decode import MAX_IMAGE_BYTES, ImageSettings, ImageSkip, convert, open_untrusted
from data.loader.pipeline import LoaderConfig, create_loader
from data.loader.transforms import TrainTransform
from data.untrusted_json import MAX_JSON_BYTES
from tests.faults.child_process import REPO, run
from tests.shard_factory import Sample, sample_members, write_shard_dir

BIG_MEMBER = 256 << 20


def _sparse_member_shard(path: Path, size: int) -> None:
    """A shard: good sample a, sample big whose .jpg member is ``size`` bytes (a hole in the file),
    good sample c."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        archive = tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT)
        for name, data in sample_members(Sample("a", [0]), rng, (48, 40)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("big.jpg")
        info.size = size
        f.write(info.tobuf(tarfile.GNU_FORMAT))
        f.seek(size + (-size % 512), io.SEEK_CUR)  # a hole: the member's data block, never written
        archive.offset = f.tell()
        for name, data in [("big.json", b'{"labels": [1]}'), *sample_members(Sample("c", [1]), rng, (48, 40))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        archive.close()


_READ_ALL = """
import json, sys
from data.loader.pipeline import LoaderConfig, create_loader
loader = create_loader([sys.argv[1]], LoaderConfig(batch_size=2, num_workers=0, image_size=16), mode="eval")
keys = sorted(key for batch in loader for key in batch["keys"])
print(json.dumps({"keys": keys, "skips": loader.skip_counts()}))
"""


def test_the_loader_skips_an_oversized_member_without_reading_it(tmp_path):
    peaks = {}
    for name, size in (("plain", 1), ("big", BIG_MEMBER)):
        shard = tmp_path / f"{name}.tar"
        _sparse_member_shard(shard, size)
        done = run([sys.executable, "-c", _READ_ALL, str(shard)], env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                   timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[name] = done.peak_rss_mib
        if name == "big":
            assert result == {"keys": ["a", "c"], "skips": {"too_large": 1}}
    assert (tmp_path / "big.tar").stat().st_size > BIG_MEMBER > MAX_IMAGE_BYTES
    print(f"peak RSS: {peaks['big']:.0f} MiB with the {BIG_MEMBER >> 20} MiB member, {peaks['plain']:.0f} without")
    assert peaks["big"] < peaks["plain"] + 64


def test_the_loader_skips_a_json_member_over_its_cap(tmp_path):
    big_json = json.dumps({"labels": [1], "pad": "x" * MAX_JSON_BYTES}).encode()
    shards = write_shard_dir(tmp_path, [[Sample("a", [0]), Sample("big", [1], json_bytes=big_json), Sample("c", [1])]],
                             num_labels=2, split="val")
    loader = create_loader(shards, LoaderConfig(batch_size=4, num_workers=0, image_size=16), mode="eval")
    assert sorted(key for batch in loader for key in batch["keys"]) == ["a", "c"]
    assert loader.skip_counts() == {"too_large": 1}


def _png(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    """A valid PNG of black pixels, compressed row by row (never held decoded)."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = bytes(1 + width * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    body = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def rgba16_png() -> bytes:
    return _png(10000, 9999, 16, 6)


def test_a_sixteen_bit_rgba_png_under_the_pixel_limit_is_refused_by_its_decoded_bytes(rgba16_png):
    assert len(rgba16_png) < 1 << 20 and 10000 * 9999 < ImageSettings().max_pixels
    with pytest.raises(ImageSkip) as builder:
        convert(rgba16_png)
    with pytest.raises(ImageSkip) as loader:
        TrainTransform(224)(rgba16_png, np.random.default_rng(0))
    for skip in (builder.value, loader.value):
        assert skip.reason == "too_many_pixels" and "10000x9999 RGBA takes about" in skip.detail, skip.detail


@pytest.mark.parametrize("width, height, bit_depth, colour_type", [(10000, 9999, 8, 2), (6000, 5000, 16, 6)])
def test_images_within_the_decoded_bytes_limit_pass_the_guard(width, height, bit_depth, colour_type):
    # 8-bit RGB at the pixel limit; RGBA at 30 M pixels (13 bytes a pixel, under 4 x 100 M)
    data = _png(width, height, bit_depth, colour_type)
    with open_untrusted(data, ImageSettings().max_pixels) as image:
        assert image.size == (width, height)  # opened, not decoded
