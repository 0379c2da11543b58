"""Deterministic tars (data/shards/tar_writer.py): byte for byte what tarfile writes for the same
members and header fields, with the size and sha256 of what was written."""
from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from data.shards.tar_writer import _header, write_tar


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members:
            archive.addfile(_header(name, len(data)), io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("members", [
    [],
    [("a.jpg", b"")],
    [("k1.jpg", b"x" * 511), ("k1.json", b"{}"), ("k2.jpg", b"y" * 512), ("k2.json", b"z" * 513)],
    [("d" * 90 + "/" + "n" * 90 + ".jpg", b"long name, split into prefix and name"), ("ü/猫.jpg", b"utf-8"),
     ("../x.jpg", b"a name is only a name"), ("big.jpg", bytes(range(256)) * 80)],
])
def test_the_bytes_are_tarfiles(tmp_path, members):
    size, sha256 = write_tar(tmp_path / "t.tar", members)
    written = (tmp_path / "t.tar").read_bytes()
    assert written == tarfile_bytes(members)
    assert size == len(written) and size % tarfile.RECORDSIZE == 0
    assert sha256 == hashlib.sha256(written).hexdigest()
    with tarfile.open(tmp_path / "t.tar") as archive:
        assert [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()] == members


def test_a_name_tar_cannot_hold_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="name is too long"):
        write_tar(tmp_path / "t.tar", [("n" * 101, b"x")])
    assert list(tmp_path.iterdir()) == []
