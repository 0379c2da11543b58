"""Where a record's image lives (data/images/sources.py): a YFCC100M mirror, a flat folder, img2dataset
tars indexed by key and url, or the record itself; and reading the bytes, a missing one counted."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest

from data.corpus.record import Record
from data.images.decode import ImageSkip
from data.images.sources import (MAX_IMAGE_BYTES, FileImage, ImageResolver, InlineImage, MissingImage, read_image,
                                 url_md5)
from data.shards.tar_writer import write_tar
from data.tar_member import TarMember
from tests.shard_factory import img2dataset_members


def _record(key: str, image=None, **meta) -> Record:
    return Record(key=key, tags=["cat"], image=image, meta=meta)


def test_mirror_layout_by_url_md5_then_row_hash(tmp_path):
    url = "http://farm1.staticflickr.com/1/588715640_40971fc6fa.jpg"
    digest = url_md5(url)
    images = tmp_path / "mirror" / "data" / "images"
    (images / digest[:3] / digest[3:6]).mkdir(parents=True)
    (images / digest[:3] / digest[3:6] / f"{digest}.jpg").write_bytes(b"x")
    unpadded = "5f2a9e1c0b7d3a4f8e6c2b1a0d9f8e7"  # 31 hex digits, as some converters write it
    (images / unpadded[:3] / unpadded[3:6]).mkdir(parents=True)
    (images / unpadded[:3] / unpadded[3:6] / f"{unpadded}.jpg").write_bytes(b"y")
    for location in (tmp_path / "mirror", images):
        resolver = ImageResolver(location)
        assert resolver.describe()["layout"] == "yfcc100m-mirror"
        assert resolver.resolve(_record("1", url, download_url=url)) == FileImage(
            str(images / digest[:3] / digest[3:6] / f"{digest}.jpg"))
        other = "http://farm1.staticflickr.com/2/other.jpg"
        assert resolver.resolve(_record("2", other, hash=unpadded)) == FileImage(
            str(images / unpadded[:3] / unpadded[3:6] / f"{unpadded}.jpg"))
        assert resolver.resolve(_record("3", other, hash="0")) is None


def test_flat_folder_by_key_then_url_file_name(tmp_path):
    (tmp_path / "k1.png").write_bytes(b"x")
    (tmp_path / "588715640_40971fc6fa.jpg").write_bytes(b"y")
    resolver = ImageResolver(tmp_path)
    assert resolver.resolve(_record("k1")) == FileImage(str(tmp_path / "k1.png"))
    url = "http://farm1.staticflickr.com/1/588715640_40971fc6fa.jpg"
    assert resolver.resolve(_record("99", url)) == FileImage(str(tmp_path / "588715640_40971fc6fa.jpg"))
    assert resolver.resolve(_record("k2")) is None


def test_img2dataset_tars_indexed_by_key_and_url(tmp_path):
    write_tar(tmp_path / "00000.tar", img2dataset_members(6, np.random.default_rng(1)))
    resolver = ImageResolver(tmp_path / "00000.tar")
    assert resolver.describe()["layout"] == "img2dataset"
    by_url = resolver.resolve(_record("zz", "http://x/3.jpg"))
    assert (by_url.tar, by_url.member) == (str(tmp_path / "00000.tar"), "000000003.jpg")
    assert resolver.resolve(_record("000000003")) == by_url
    with tarfile.open(by_url.tar) as archive:
        assert read_image(by_url) == archive.extractfile("000000003.jpg").read()
    carried = TarMember("t.tar", "a.jpg", 512, 10)
    assert ImageResolver(None).resolve(_record("k", carried)) is carried


def test_unreadable_images_are_missing_not_errors(tmp_path):
    assert read_image(InlineImage(b"bytes")) == b"bytes"
    with pytest.raises(MissingImage, match="gone.jpg"):
        read_image(FileImage(str(tmp_path / "gone.jpg")))
    with pytest.raises(MissingImage, match="gone.tar"):
        read_image(TarMember(str(tmp_path / "gone.tar"), "a.jpg", 512, 10))
    write_tar(tmp_path / "short.tar", [("a.jpg", b"0123456789")])
    with pytest.raises(MissingImage, match="cut short"):
        read_image(TarMember(str(tmp_path / "short.tar"), "a.jpg", 512, 10_000))


def test_images_over_the_size_limit_are_refused_before_they_are_read(tmp_path):
    write_tar(tmp_path / "t.tar", [("a.jpg", b"x" * 5000), ("b.jpg", b"y" * 100)])
    with tarfile.open(tmp_path / "t.tar") as archive:
        big, small = (TarMember.of(tmp_path / "t.tar", archive.getmember(n)) for n in ("a.jpg", "b.jpg"))
    with pytest.raises(ImageSkip, match="5000 bytes") as refused:
        read_image(big, max_bytes=4096)
    assert refused.value.reason == "too_large"
    assert read_image(small, max_bytes=4096) == b"y" * 100
    (tmp_path / "big.jpg").write_bytes(b"z" * 5000)
    with pytest.raises(ImageSkip, match="too_large"):
        read_image(FileImage(str(tmp_path / "big.jpg")), max_bytes=4096)
    assert read_image(FileImage(str(tmp_path / "big.jpg")), max_bytes=5000) == b"z" * 5000
    with pytest.raises(ImageSkip, match="too_large"):
        read_image(InlineImage(b"w" * 5000), max_bytes=4096)
    # The default limit, from the header alone: a member claiming 3 GB in a 10 KB file is refused
    # as too large, not read (it would be "cut short").
    claims = TarMember(str(tmp_path / "t.tar"), "a.jpg", 512, 3 << 30)
    assert 3 << 30 > MAX_IMAGE_BYTES
    with pytest.raises(ImageSkip, match="too_large"):
        read_image(claims)
