"""Tar shards -> raw samples (a dict of member bytes per key), with damaged shards counted.

Members are grouped by key, the file name up to its first dot (webdataset's rule,
:func:`data.tar_member.split_member_name`), within one shard only: a key that ends one shard and
starts the next gives two samples, never a merged one, and a key that repeats inside a shard starts
a new sample when a member suffix repeats. Opening goes through webdataset's ``gopen``, so ``pipe:``
commands and http(s) URLs work as well as local files.

A plain tar is read by :class:`_TarStream`, straight from the stream (never seeked): a member's
header, then its data, then its padding with the next header, a few reads a member and a fraction
of :mod:`tarfile`'s CPU time. It gives the members ``tarfile.open(fileobj=stream, mode="r|*")``
gives: headers are checked as tarfile checks them, GNU long names and pax ``path`` and ``size``
records applied, regular files kept and every other type skipped. Compressed shards (gzip, bzip2,
xz) are read by tarfile itself, and so is the rest of a tar from the first header this reader
leaves to it: a GNU sparse file, a negative size, an extension header over 1 MiB, pax records that
change how names are decoded or that apply to every member.

A shard that cannot be opened, that ends inside a header or a member, or that holds a header
tarfile refuses (a bad checksum, a numeric field that is no number), is counted and the stream
moves on; the samples read before the damage are kept (past its first header, tarfile's stream
ends at a cut or refused header silently, with the same samples; here it is counted). A member
larger than its cap (:data:`~data.images.decode.MAX_IMAGE_BYTES`, or
:data:`~data.untrusted_json.MAX_JSON_BYTES` for ``.json``) is never read: its data is skipped in
bounded reads, and its sample is counted as ``too_large``.
"""
from __future__ import annotations

import re
import struct
import tarfile
import zlib
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from webdataset.gopen import gopen

from data.images.decode import MAX_IMAGE_BYTES
from data.loader.skips import SkipCounter
from data.tar_member import split_member_name
from data.untrusted_json import MAX_JSON_BYTES

Sample = dict[str, Any]
#: a regular member: its name, its size, and a call that reads its data (valid until the next
#: member is asked for; a member left unread is skipped)
Member = tuple[str, int, Callable[[], bytes]]


def tar_samples(urls: Iterable[str], skips: SkipCounter, on_shard: Callable[[], None] | None = None,
                mismatch: Callable[[str], str | None] | None = None) -> Iterator[Sample]:
    """Samples ``{"__key__", "__url__", <suffix>: bytes ...}`` of every shard in ``urls``;
    ``on_shard`` is called as each shard is opened. A shard for which ``mismatch`` (e.g.
    :meth:`~data.loader.shard_digests.ShardDigests.mismatch`) gives a reason is skipped, counted
    as ``corrupt_shard``."""
    for url in urls:
        if on_shard is not None:
            on_shard()
        problem = mismatch(url) if mismatch is not None else None
        if problem is not None:
            skips.add("corrupt_shard", url, problem)
            continue
        try:
            stream = gopen(url, "rb")
        except Exception as err:  # noqa: BLE001 - any failure to open is the same skip
            skips.add("unreadable_shard", url, f"{type(err).__name__}: {err}")
            continue
        damage = yield from _shard_samples(stream, url, skips)
        try:
            stream.close()  # a pipe: source reports its command's failure here
        except Exception as err:  # noqa: BLE001 - a failed command explains any damage seen
            skips.add("unreadable_shard", url, f"{type(err).__name__}: {err}")
            continue
        if damage is not None:
            skips.add("truncated_tar", url, damage)


def _shard_samples(stream: Any, url: str, skips: SkipCounter) -> Iterator[Sample]:
    """Yields the shard's samples (a sample with a member over its cap is counted instead); returns
    what cut the shard short, or None."""
    current: Sample | None = None
    damage = None
    try:
        for name, size, read in _TarStream(stream).members():
            named = split_member_name(name)
            if named is None or name.startswith("__"):
                continue
            key, suffix = named
            cap = MAX_JSON_BYTES if suffix == "json" else MAX_IMAGE_BYTES
            data = None if size > cap else read()  # an oversized member is left unread, so skipped
            if current is None or key != current["__key__"] or suffix in current:
                if current is not None:
                    yield from _complete(current, skips)
                current = {"__key__": key, "__url__": url}
            current[suffix] = b"" if data is None else data
            if data is None:
                current[_TOO_LARGE] = f"{name}: {size} bytes, over the {cap} a member may have"
    except (tarfile.TarError, OSError, EOFError) as err:
        damage = f"{type(err).__name__}: {err}"
    if current is not None:
        yield from _complete(current, skips)
    return damage


_TOO_LARGE = "__too_large__"


def _complete(sample: Sample, skips: SkipCounter) -> Iterator[Sample]:
    if _TOO_LARGE in sample:
        skips.add("too_large", f"{sample['__key__']} in {sample['__url__']}", sample[_TOO_LARGE])
    else:
        yield sample


_BLOCK = tarfile.BLOCKSIZE
_END = bytes(_BLOCK)  # a zero block: the end of the archive
_SKIP_READ = 1 << 20  # unread member data is skipped in reads of at most this many bytes
_MAX_EXTENSION = 1 << 20  # an extension header (GNU long name, pax records) with more data is left to tarfile
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)  # tarfile's isreg() less GNU sparse
# Types whose data tarfile does not skip (it reads none, whatever the size field says); every other
# type but the extension headers has size bytes of data.
_NO_DATA = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
            tarfile.FIFOTYPE)
_PAX = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE)
_EXTENSIONS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) + _PAX
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # tarfile's: "<length> <keyword>=<value>\n"
# The numeric fields tarfile reads that the loader does not use: mode, uid, gid, mtime, devmajor,
# devminor. Each is checked at once where it holds what writers write, octal digits between spaces
# up to a NUL (a field without a NUL only matches if all its bytes are such, which tarfile reads as
# a number too); a header that does not match is checked field by field as tarfile does.
_UNUSED_NUMBERS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))
_USUAL_NUMBERS = re.compile(rb"%s.{8}%s.{8}%s.{8}.{12}%s.{193}%s.{8}%s" % ((rb"(?= *[0-7]* *\0)",) * 6), re.DOTALL)


class _TarStream:
    """The regular members of a tar stream, as ``tarfile.open(fileobj=stream, mode="r|*")`` gives
    them (see the module's docstring for where the two differ)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._size = 0  # the size of the member last yielded
        self._left = 0  # the bytes of its data and padding not read yet

    def members(self) -> Iterator[Member]:
        header = self._read(_BLOCK)
        if _compressed(header):
            yield from _tarfile_members(_Replay(header, self._stream))
            return
        # The extension headers (with their data) since the last member: each applies to the next
        # member, the first one to set its name or size winning, as in tarfile.
        extensions: list[bytes] = []
        name: str | None = None
        size: int | None = None
        start = True
        while True:
            if not header and not start and not extensions:
                return  # the stream ends between members: a tar without its end-of-archive blocks
            if header == _END and not extensions:
                return  # tarfile reads nothing past the first zero block either
            _check(header, start)
            start = False
            kind = header[156:157]
            own_size = _number(header[124:136])
            if kind in _EXTENSIONS and 0 <= own_size <= _MAX_EXTENSION:
                data = self._exact(_padded(own_size))
                extensions.append(header + data)
                if kind == tarfile.GNUTYPE_LONGNAME and name is None:
                    name = _text(data.partition(b"\0")[0])
                elif kind in _PAX:
                    records = _pax_records(data)
                    if any(_left_to_tarfile(key, kind) for key in records):
                        break
                    if kind != tarfile.XGLTYPE:
                        if name is None and "path" in records:
                            name = _pax_text(records["path"]).rstrip("/")
                        if size is None and "size" in records:
                            size = _pax_int(records["size"])
                header = self._read(_BLOCK)
                continue
            size = own_size if size is None else size
            if kind in _EXTENSIONS or kind == tarfile.GNUTYPE_SPARSE or size < 0:
                extensions.append(header)
                break
            field = header[:100].partition(b"\0")[0]
            # A V7 directory: a regular file whose name ends with a slash (no data read, as for any).
            v7_directory = kind == tarfile.AREGTYPE and field.endswith(b"/")
            if kind in _REGULAR and not v7_directory:
                if name is None:
                    name = _text(field)
                    if header[345]:  # a ustar prefix: tarfile joins it whatever the format
                        name = _text(header[345:500].partition(b"\0")[0]) + "/" + name
                self._size, self._left = size, _padded(size)
                yield name, size, self._data
                header = self._past(self._left)
            else:
                header = self._past(0 if v7_directory or kind in _NO_DATA else _padded(size))
            extensions, name, size = [], None, None
        # A header this reader leaves to tarfile: tarfile reads on from the extension headers before it.
        yield from _tarfile_members(_Replay(b"".join(extensions), self._stream))

    def _data(self) -> bytes:
        """The data of the member last yielded (called once at most, before the next member)."""
        data = self._exact(self._size)
        self._left -= self._size
        return data

    def _past(self, skip: int) -> bytes:
        """The header block after the next ``skip`` bytes (fewer bytes at the stream's end); a long
        run is read in bounded chunks, never held whole."""
        while skip > _SKIP_READ:
            skip -= len(self._exact(_SKIP_READ))
        got = self._read(skip + _BLOCK)
        if len(got) < skip:
            raise tarfile.ReadError("unexpected end of data")
        return got[skip:]

    def _read(self, size: int) -> bytes:
        """``size`` bytes, fewer only at the end of the stream (which may give less per read)."""
        data = self._stream.read(size)
        while 0 < len(data) < size and (more := self._stream.read(size - len(data))):
            data += more
        return data

    def _exact(self, size: int) -> bytes:
        data = self._read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        return data


def _check(header: bytes, start: bool) -> None:
    """Raises tarfile.ReadError, with tarfile's words, unless ``header`` is a whole header block
    whose checksum holds (the unsigned sum of its bytes, the checksum field counted as spaces, or as
    some old tars write it, the signed sum) and whose numeric fields are numbers."""
    if not header:
        raise tarfile.ReadError("empty file" if start else "empty header")
    if len(header) < _BLOCK:
        raise tarfile.ReadError("truncated header")
    if header == _END:
        raise tarfile.ReadError("end of file header")  # a zero block right after an extension header
    checksum = _number(header[148:156])
    if (checksum != 256 + _byte_sum(header) - sum(header[148:156])
            and checksum != 256 + sum(struct.unpack_from("148b8x356b", header))):
        raise tarfile.ReadError("bad checksum")
    if not _USUAL_NUMBERS.match(header, 100):
        for start, end in _UNUSED_NUMBERS:
            _number(header[start:end])


def _byte_sum(block: bytes) -> int:
    """The sum of a block's bytes. The low half of Adler-32 is 1 + the sum of the bytes modulo 65521,
    and 256 bytes sum to at most 65280: two halves give the sum exactly, 6x faster than sum()."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _number(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal text up to a NUL, or GNU base-256 when its
    first byte is 0x80 (0xff: negative)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    try:
        return int(field.partition(b"\0")[0].decode("ascii").strip() or "0", 8)
    except ValueError:
        raise tarfile.ReadError("invalid header") from None


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _text(name: bytes) -> str:
    """A name from a header block or a GNU long-name member, decoded as tarfile decodes it."""
    return name.decode(tarfile.ENCODING, "surrogateescape")


def _pax_records(data: bytes) -> dict[str, bytes]:
    """A pax header's records, keyword -> raw value, parsed as tarfile parses them."""
    records = {}
    pos = 0
    while match := _PAX_RECORD.match(data, pos):
        length = int(match[1])
        if length == 0:
            raise tarfile.ReadError("invalid header")
        keyword = match[2].decode("utf-8", "surrogateescape")
        records[keyword] = data[match.end(2) + 1:match.start(1) + length - 1]
        pos += length
    return records


def _left_to_tarfile(key: str, kind: bytes) -> bool:
    """Whether a pax record is one this reader leaves to tarfile: a charset for the names, a GNU
    sparse map, or a name or size for every member that follows (a global header's)."""
    return (key == "hdrcharset" or key.startswith("GNU.sparse.")
            or (kind == tarfile.XGLTYPE and key in ("path", "size")))


def _pax_text(value: bytes) -> str:
    """A pax path: UTF-8, or tarfile's fallback for bytes that are not."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return _text(value)


def _pax_int(value: bytes) -> int:
    """A pax size; 0 when it is not a number, as tarfile has it."""
    try:
        return int(value.decode("utf-8", "surrogateescape"))
    except ValueError:
        return 0


def _compressed(block: bytes) -> bool:
    """Whether the first block of a stream is gzip, bzip2 or xz (tarfile's "r|*" tests, in its order)."""
    return (block.startswith((b"\x1f\x8b\x08", b"\x5d\x00\x00\x80", b"\xfd7zXZ"))
            or (block[0:3] == b"BZh" and block[4:10] == b"1AY&SY"))


def _tarfile_members(stream: Any) -> Iterator[Member]:
    """The regular members of a tar stream, read by tarfile (decompressed as need be)."""
    archive = tarfile.open(fileobj=stream, mode="r|*")
    for member in archive:
        archive.members = []  # stream mode keeps every header otherwise
        if member.isreg():
            yield member.name, member.size, archive.extractfile(member).read


class _Replay:
    """A stream with bytes already read from it put back in front, for tarfile to read from there."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head, self._stream = head, stream

    def read(self, size: int) -> bytes:
        if not self._head:
            return self._stream.read(size)
        data, self._head = self._head[:size], self._head[size:]
        return data
