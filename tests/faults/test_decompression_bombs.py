"""Decompression bombs are refused by the pixel limit from their header, without decoding: the real
bombs of ../shared/data/image_edge_cases (a 65536x65536 PNG header, a 20000x14000 JPEG, GIF, ICO and
BMP bombs, a PNG text-chunk bomb) and two made here that stay under Pillow's own hard bound but
over ours (a 12000x10000 PNG header, a JPEG whose frame header claims 12000x10000).

A child process converts each (the shard builder's path) and streams a shard of them through the
loader (the training path); its peak RSS, from wait4, is compared with the same work on ordinary
photos. Decoding the smallest of the bombs would take 360 MB.
"""
from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.faults.child_process import run
from tests.pretrain_runs import job_env
from tests.shard_factory import Sample, photo_like, write_shard_dir

EDGE = "image_edge_cases"
SHARED_BOMBS = {  # file -> (reason, what refused it)
    "sharp_fixtures/65536-uint32-limit.png": ("too_many_pixels", "could be decompression bomb"),
    "sharp_fixtures/giant-image.jpg": ("too_many_pixels", "could be decompression bomb"),
    "pillow_edge_cases/decompression_bomb.gif": ("too_many_pixels", "could be decompression bomb"),
    "pillow_edge_cases/decompression_bomb.ico": ("too_many_pixels", "could be decompression bomb"),
    "pillow_edge_cases/bmp_reallybig.bmp": ("too_many_pixels", "could be decompression bomb"),
    "pillow_edge_cases/png_decompression_dos.png": ("corrupt", "Decompressed data too large"),
}
MADE_BOMBS = {"png_header_12000x10000.png": ("too_many_pixels", "12000x10000 exceeds 100000000 pixels"),
              "jpeg_claiming_12000x10000.jpg": ("too_many_pixels", "12000x10000 exceeds 100000000 pixels")}

_PROBE = r"""
import json, sys
from pathlib import Path
from data.images.decode import ImageSkip, convert
from data.loader.pipeline import LoaderConfig, create_loader
outcomes = {}
for path in sys.argv[2:]:
    try:
        convert(Path(path).read_bytes())
        outcomes[Path(path).name] = ["ok", ""]
    except ImageSkip as skip:
        outcomes[Path(path).name] = [skip.reason, skip.detail]
config = LoaderConfig(batch_size=4, num_workers=0, image_size=32, split="train")
loader = create_loader(sys.argv[1], config, mode="eval")
delivered = sum(len(batch["keys"]) for batch in loader)
print(json.dumps({"convert": outcomes, "loader_skips": loader.skip_counts(), "delivered": delivered}))
"""


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim ``width`` x ``height``."""
    out = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _probe(files: dict[str, bytes], tmp_path: Path, name: str) -> tuple[dict, float]:
    folder = tmp_path / name
    folder.mkdir()
    paths = []
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
        paths.append(str(folder / file_name))
    shard = [Sample(Path(n).stem.replace(".", "_"), [0], image=data) for n, data in files.items()]
    shards = write_shard_dir(tmp_path / f"{name}-shards", [shard], num_labels=1)
    done = run([sys.executable, "-c", _PROBE, str(shards), *paths], env=job_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), done.peak_rss_mib


def test_decompression_bombs_are_refused_from_the_header_without_decoding(shared_data, tmp_path):
    bombs = {Path(name).name: (shared_data / EDGE / name).read_bytes() for name in SHARED_BOMBS}
    bombs.update({"png_header_12000x10000.png": _png_header(12000, 10000),
                  "jpeg_claiming_12000x10000.jpg": _jpeg_claiming(12000, 10000)})
    expected = {Path(name).name: outcome for name, outcome in {**SHARED_BOMBS, **MADE_BOMBS}.items()}
    rng = np.random.default_rng(0)
    photos = {f"photo{i}.jpg": photo_like(rng, 640, 480) for i in range(len(bombs))}

    refused, bomb_rss = _probe(bombs, tmp_path, "bombs")
    ordinary, photo_rss = _probe(photos, tmp_path, "photos")
    for name, (reason, refused_by) in expected.items():
        assert refused["convert"][name][0] == reason, (name, refused["convert"][name])
        assert refused_by in refused["convert"][name][1], (name, refused["convert"][name])
    # The training loader counts the same refusals and delivers nothing of them.
    assert refused["loader_skips"] == {"too_many_pixels": 7, "corrupt": 1} and refused["delivered"] == 0
    assert set(map(tuple, ordinary["convert"].values())) == {("ok", "")} and ordinary["delivered"] == len(photos)
    assert bomb_rss < photo_rss + 64, (bomb_rss, photo_rss)
    print(f"peak RSS: {bomb_rss:.0f} MiB over {len(bombs)} bombs vs {photo_rss:.0f} MiB over as many 640x480 "
          "photos (decoding the smallest bomb would take 360 MB)")
