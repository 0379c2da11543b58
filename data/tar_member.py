"""A member of a tar file: how its name splits into sample key and suffix, which suffixes hold an
image, and the address of one member's bytes.

Every reader of tars goes through :func:`split_member_name` (the img2dataset corpus, the image index
of the shard builder, the training loader, transfer's labelled shards), so a tar means the same
samples everywhere, and the same samples as in plain ``webdataset.WebDataset``: the key is the name
up to the first dot of its file name, the suffix the rest (webdataset's ``base_plus_ext``,
lower-cased as its ``group_by_keys`` does). Written here rather than imported from webdataset, whose
import costs seconds and pulls in torch; tests/data/test_tar_member.py checks it against webdataset.
"""
from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass

# webdataset's rule, webdataset.tariterators.base_plus_ext, character for character (its quirks
# included: '.' does not match a newline, and a last component that starts with a dot makes the
# directory part the key, as in 'x/.a.jpg' -> ('x/', 'a.jpg')).
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")

#: suffixes of a sample's image member, in the order a sample's image is chosen when it has several;
#: also the file extensions (without the dot) that mark an image file in a folder
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


def split_member_name(name: str) -> tuple[str, str] | None:
    """``(sample key, lower-cased suffix)`` of a tar member name, or None when the name carries no
    suffix and so belongs to no sample ('a/00012.tar.jpg' -> ('a/00012', 'tar.jpg'))."""
    match = _MEMBER_NAME.match(name)
    return None if match is None else (match.group(1), match.group(2).lower())


def is_image_file(name: str) -> bool:
    """Whether a file name's last extension is one of :data:`IMAGE_SUFFIXES` (any case)."""
    return os.path.splitext(name)[1][1:].lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class TarMember:
    """A regular file inside a tar, addressed by where its bytes lie (from its header), so that it
    is read with one positioned read and no tar parsing. ``member`` is its name as stored, for
    messages only: never used as a path."""

    tar: str
    member: str
    offset: int
    size: int

    @classmethod
    def of(cls, tar: str | os.PathLike, info: tarfile.TarInfo) -> TarMember:
        """The member ``info`` of ``tar``, as a tar opened with :func:`tarfile.open` reports it."""
        return cls(str(tar), info.name, info.offset_data, info.size)

    def read(self) -> bytes:
        """The member's bytes; OSError when the tar cannot be read or ends inside the member."""
        fd = os.open(self.tar, os.O_RDONLY)
        try:
            data = os.pread(fd, self.size, self.offset)
        finally:
            os.close(fd)
        if len(data) != self.size:
            raise OSError(f"{self.tar}: member {self.member!r} is cut short")
        return data
