"""data/tar_member.py: the member-name rule against webdataset's own (the oracle), the same grouping
from every reader of tars, and reading a member by its address."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from data.corpus.img2dataset import Img2DatasetReader
from data.images.sources import index_img2dataset
from data.loader.skips import SkipCounter
from data.loader.tar_samples import tar_samples
from data.tar_member import IMAGE_SUFFIXES, TarMember, is_image_file, split_member_name

TRICKY_NAMES = [
    "00012.jpg", "a/00012.jpg", "a/b/00012.tar.jpg",  # plain, directory, several dots
    "dir.with.dots/key.jpg", "v1.2/sub.dir/key.seg.png",  # dots in directories
    "dir.with.dots/noext", "noext", "a/b/c",  # no extension
    "photo.JPG", "Photo.Tar.JPEG", "x.Json",  # upper-case suffixes
    "./a.jpg", "./a.b.jpg", "./dir.x/a.jpg", "././a.jpg",  # leading './'
    ".hidden.jpg", "x/.a.jpg", "x.y/.a.jpg", "a..jpg", "a.", "trailing/", "",  # dots at the edges
    "../escape.jpg", "/abs/photo.png", "deep/../../climb.json", "a//b.jpg",  # hostile paths
    "名前/写真.jpeg", "with space/a b.cls", "a\nb.jpg", "x.y\nz/a.jpg",  # unicode, spaces, newlines
]


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_split_agrees_with_webdataset(name: str) -> None:
    key, suffix = base_plus_ext(name)
    expected = None if key is None else (key, suffix.lower())  # group_by_keys lower-cases (lcase=True)
    assert split_member_name(name) == expected


def test_examples_of_the_rule() -> None:
    assert split_member_name("dir.with.dots/key.tar.gz") == ("dir.with.dots/key", "tar.gz")
    assert split_member_name("./Photo.JPG") == ("./Photo", "jpg")
    assert split_member_name("dir.with.dots/noext") is None
    assert is_image_file("a.b/photo.JPEG") and not is_image_file("photo.json") and not is_image_file("jpg")
    assert all(is_image_file(f"x.{suffix}") for suffix in IMAGE_SUFFIXES)


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _tricky_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """A tar whose samples have dotted directories, several dots, upper-case suffixes, './' prefixes
    and a member without a suffix; returns the samples as webdataset should group them."""
    samples = {
        "dir.with.dots/k1": {"jpg": b"image 1", "json": json.dumps({"tags": ["a"], "url": "u1"}).encode()},
        "./k2": {"jpeg": b"image 2", "json": json.dumps({"tags": ["b"], "url": "u2"}).encode()},
        "v1.2/k3": {"png": b"image 3", "seg.png": b"mask 3", "json": json.dumps({"tags": ["c"]}).encode()},
    }
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        _add(archive, "dir.with.dots/k1.JPG", b"image 1")
        _add(archive, "dir.with.dots/k1.json", samples["dir.with.dots/k1"]["json"])
        _add(archive, "README", b"not part of any sample")
        _add(archive, "./k2.jpeg", b"image 2")
        _add(archive, "./k2.Json", samples["./k2"]["json"])
        _add(archive, "v1.2/k3.png", b"image 3")
        _add(archive, "v1.2/k3.seg.png", b"mask 3")
        _add(archive, "v1.2/k3.json", samples["v1.2/k3"]["json"])
    return samples


def test_every_reader_groups_a_tar_as_webdataset_does(tmp_path: Path) -> None:
    tar = tmp_path / "00000.tar"
    expected = _tricky_tar(tar)
    oracle = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
              for s in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)}
    assert oracle == expected
    loader = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
              for s in tar_samples([str(tar)], SkipCounter(1))}
    assert loader == oracle
    records = list(Img2DatasetReader(tar).records())
    assert [r.key for r in records] == list(oracle)
    assert [r.image.read() for r in records] == [sample.get("jpg") or sample.get("jpeg") or sample["png"]
                                                 for sample in oracle.values()]
    index = index_img2dataset([tar])
    assert {key: index[key].read() for key in oracle} == {key: r.image.read() for key, r in zip(oracle, records)}
    assert index["u1"] == index["dir.with.dots/k1"] and index["u2"] == index["./k2"]


def test_member_is_read_by_its_address(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    long_name = "deep/" * 40 + "photo.jpg"  # past the 100-byte ustar field: a long-name header first
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as archive:
        _add(archive, "a.jpg", b"first")
        _add(archive, long_name, b"second" * 100)
    with tarfile.open(tar) as archive:
        members = [TarMember.of(tar, info) for info in archive]
    assert [m.member for m in members] == ["a.jpg", long_name]
    assert [m.read() for m in members] == [b"first", b"second" * 100]
    tar.write_bytes(tar.read_bytes()[: members[1].offset + 10])
    with pytest.raises(OSError, match="is cut short"):
        members[1].read()
    tar.unlink()
    with pytest.raises(FileNotFoundError):
        members[0].read()
