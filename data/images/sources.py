"""Where a corpus record's image bytes live, and reading them.

The shard builder joins records with images from one ``--images`` location:

- a YFCC100M mirror: ``data/images/<h[:3]>/<h[3:6]>/<h>.jpg`` with ``h`` the md5 of the download
  URL (the mirror root or its ``data/images`` directory may be given). The 25-column metadata's own
  ``hash`` column is tried second: common converters write it without zero padding.
- a flat directory of ``<name>.<ext>``: looked up by the record key, then by the URL's file name
  (``588715640_40971fc6fa.jpg``), then by the md5 of the URL.
- img2dataset shards (a ``.tar``, a directory of them, or a glob): indexed by sample key and by the
  ``url`` in each sample's ``.json``. Members are read in place with ``os.pread`` at the offset the
  tar header gives (:class:`~data.tar_member.TarMember`): never extracted, and a member name is never
  used as a path.

Records may also carry their image themselves (a path, a :class:`~data.tar_member.TarMember`, the
bytes).
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union
from urllib.parse import urlsplit

from data.corpus.record import Record
from data.errors import UserError
from data.images.decode import MAX_IMAGE_BYTES, ImageSkip  # the one image size cap, shared with the loader
from data.tar_member import IMAGE_SUFFIXES, TarMember, is_image_file, split_member_name
from data.untrusted_json import MAX_JSON_BYTES, InvalidJSON, parse_json

_HEX3 = re.compile(r"[0-9a-f]{3}")
_ROW_HASH = re.compile(r"[0-9a-f]{1,32}")


@dataclass(frozen=True)
class FileImage:
    path: str


@dataclass(frozen=True)
class InlineImage:
    data: bytes


ImageSource = Union[FileImage, TarMember, InlineImage]


class MissingImage(Exception):
    """The image a record points to is not there (file, tar or member absent, or unreadable)."""


def url_md5(url: str) -> str:
    return hashlib.md5(url.encode("utf-8")).hexdigest()


def record_url(record: Record) -> str | None:
    if isinstance(record.image, str) and "://" in record.image:
        return record.image
    url = record.meta.get("download_url") or record.meta.get("url")
    return url if isinstance(url, str) and url else None


class ImageResolver:
    """Maps a record to an :class:`ImageSource` (or None when no image can be found)."""

    def __init__(self, location: str | Path | None = None) -> None:
        self.location = str(location) if location is not None else None
        self._mirror: str | None = None  # the mirror's data/images folder
        self._flat: dict[str, str] | None = None
        self._tar_index: dict[str, TarMember] | None = None
        self._root: Path | None = None
        if location is not None:
            self._detect(Path(location))

    def _detect(self, path: Path) -> None:
        if path.is_dir():
            self._root = path
            if (path / "data" / "images").is_dir():
                self._mirror = str(path / "data" / "images")
            elif _looks_like_mirror(path):
                self._mirror = str(path)
            elif any(path.glob("*.tar")):
                self._tar_index = index_img2dataset(sorted(path.glob("*.tar")))
            else:
                self._flat = _index_flat(path)
            return
        tars = sorted(Path(p) for p in glob.glob(str(path)) if p.endswith(".tar"))
        if not tars:
            raise UserError(f"--images {path}: not found; pass an image directory (flat or YFCC100M "
                            "mirror layout), an img2dataset .tar, or a directory/glob of them")
        self._tar_index = index_img2dataset(tars)

    def describe(self) -> dict:
        kind = ("yfcc100m-mirror" if self._mirror else "img2dataset" if self._tar_index is not None
                else "flat-directory" if self._flat is not None else "records")
        return {"location": self.location, "layout": kind}

    def resolve(self, record: Record) -> ImageSource | None:
        image = record.image
        if isinstance(image, bytes):
            return InlineImage(image)
        if isinstance(image, TarMember):
            return image
        if isinstance(image, Path) or (isinstance(image, str) and "://" not in image and image):
            return self._resolve_path(Path(image))
        if self._mirror is not None:
            return self._resolve_mirror(record)
        if self._flat is not None:
            return self._resolve_flat(record)
        if self._tar_index is not None:
            url = record_url(record)
            return self._tar_index.get(record.key) or (self._tar_index.get(url) if url else None)
        return None

    def _resolve_path(self, path: Path) -> FileImage | None:
        candidates = [path]
        if self._root is not None:
            # A table's paths are relative to the table; the files may sit in --images instead.
            candidates += [self._root / path, self._root / path.name]
        for candidate in candidates:
            if candidate.is_file():
                return FileImage(str(candidate))
        return None

    def _resolve_mirror(self, record: Record) -> FileImage | None:
        url = record_url(record)
        names = [url_md5(url)] if url else []
        row_hash = record.meta.get("hash")
        if isinstance(row_hash, str) and _ROW_HASH.fullmatch(row_hash):
            names.append(row_hash)
        for name in names:
            # String joins, not pathlib: this runs once per corpus row.
            path = os.path.join(self._mirror, name[:3], name[3:6], f"{name}.jpg")
            if os.path.isfile(path):
                return FileImage(path)
        return None

    def _resolve_flat(self, record: Record) -> FileImage | None:
        url = record_url(record)
        stems = [record.key]
        if url:
            stems += [Path(urlsplit(url).path).stem, url_md5(url)]
        for stem in stems:
            name = self._flat.get(stem)
            if name is not None:
                return FileImage(str(self._root / name))
        return None


def _looks_like_mirror(path: Path) -> bool:
    # A look at the first entries only: a flat folder may hold millions of files.
    with os.scandir(path) as entries:
        first = list(itertools.islice(entries, 50))
    return bool(first) and all(e.is_dir() and _HEX3.fullmatch(e.name) for e in first)


def _index_flat(path: Path) -> dict[str, str]:
    index: dict[str, str] = {}
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if is_image_file(entry.name) and entry.is_file():
                index.setdefault(os.path.splitext(entry.name)[0], entry.name)
    return index


def index_img2dataset(tars: list[Path]) -> dict[str, TarMember]:
    """Sample key and ``url`` (from the sample's .json) -> its image member, over img2dataset tars."""
    index: dict[str, TarMember] = {}
    for tar in tars:
        images: dict[str, TarMember] = {}
        urls: dict[str, str] = {}
        try:
            with tarfile.open(tar, "r:") as archive:
                for member in archive:
                    named = split_member_name(member.name) if member.isfile() else None
                    if named is None:
                        continue
                    key, suffix = named
                    if suffix in IMAGE_SUFFIXES:
                        images.setdefault(key, TarMember.of(tar, member))
                    elif suffix == "json" and member.size <= MAX_JSON_BYTES:
                        url = _json_url(archive.extractfile(member).read())
                        if url:
                            urls[key] = url
        except (OSError, tarfile.TarError) as err:
            raise UserError(f"--images: cannot read img2dataset shard {tar}: {err}") from None
        for key, source in images.items():
            index.setdefault(key, source)
            if key in urls:
                index.setdefault(urls[key], source)
    return index


def _json_url(raw: bytes) -> str | None:
    try:
        row = parse_json(raw)
    except InvalidJSON:
        return None
    url = row.get("url") if isinstance(row, dict) else None
    return url if isinstance(url, str) else None


def read_image(source: ImageSource, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of ``source``; :class:`MissingImage` when its file or tar member cannot be read,
    ``ImageSkip("too_large")`` when it holds more than ``max_bytes`` (checked from the tar header or
    the file's size before anything is read, so a hostile multi-gigabyte member never reaches memory)."""
    if isinstance(source, InlineImage):
        _check_size(len(source.data), max_bytes, "inline image")
        return source.data
    try:
        if isinstance(source, TarMember):
            _check_size(source.size, max_bytes, f"{source.tar}: member {source.member!r}")
            return source.read()
        with open(source.path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            _check_size(size, max_bytes, source.path)
            data = _read_up_to(f, (size or max_bytes) + 1)  # a size of 0 may mean "unknown" (/proc, a pipe)
        _check_size(len(data), max_bytes, source.path)
        return data
    except OSError as err:
        where = source.tar if isinstance(source, TarMember) else source.path
        raise MissingImage(f"{where}: {err.strerror}" if err.strerror else str(err)) from None


def _read_up_to(f, limit: int) -> bytes:
    parts = []
    while limit > 0 and (part := f.read(limit)):
        parts.append(part)
        limit -= len(part)
    return b"".join(parts)


def _check_size(size: int, max_bytes: int, where: str) -> None:
    if size > max_bytes:
        raise ImageSkip("too_large", f"{where}: {size} bytes, more than the {max_bytes} an image may have")
