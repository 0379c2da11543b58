"""An img2dataset tar whose image member is 2 GiB (a sparse file: it costs no disk) is built into
shards without that member ever being read: it is skipped and counted as ``too_large`` from its tar
header, and the builder's peak memory stays far below the member's size. Before the size limit the
builder read the member whole."""
from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

from data.images.sources import MAX_IMAGE_BYTES
from data.vocab.vocabulary import Label, Vocabulary
from tests.faults.child_process import REPO, run
from tests.shard_factory import img2dataset_members

HUGE = 2 << 30


def _tar_with_a_huge_member(path: Path) -> None:
    """A valid tar: ``big.jpg`` of HUGE bytes of zeros (a hole in the file), then 6 real samples."""
    big = tarfile.TarInfo("big.jpg")
    big.size = HUGE
    rest = io.BytesIO()
    with tarfile.open(fileobj=rest, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        meta = json.dumps({"key": "big", "url": "http://x/big.jpg", "tags": "cat"}).encode()
        members = [("big.json", meta)] + img2dataset_members(6, np.random.default_rng(0), tags=lambda i: "cat")
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(big.tobuf(format=tarfile.USTAR_FORMAT))
        f.seek(HUGE, io.SEEK_CUR)
        f.write(rest.getvalue())


def test_a_huge_image_member_is_skipped_unread(tmp_path):
    _tar_with_a_huge_member(tmp_path / "00000.tar")
    assert HUGE > MAX_IMAGE_BYTES and (tmp_path / "00000.tar").stat().st_size > HUGE
    Vocabulary([Label(0, "cat", 7)]).save(tmp_path / "vocab.json")
    out = tmp_path / "out"
    done = run([sys.executable, str(REPO / "scripts" / "build_shards.py"), "--source", "img2dataset", "--input",
                str(tmp_path / "00000.tar"), "--vocab", str(tmp_path / "vocab.json"), "--out", str(out),
                "--val-fraction", "0", "--workers", "1", "--no-progress"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"]["counts"] == {"too_large": 1}
    assert report["skipped"]["examples"]["too_large"] == ["big"]
    assert report["kept"]["train"] == 6
    assert done.peak_rss_mib < 1024, f"peak RSS {done.peak_rss_mib:.0f} MiB for a {HUGE >> 20} MiB member"
    print(f"2 GiB member skipped as too_large; builder peak RSS {done.peak_rss_mib:.0f} MiB")
