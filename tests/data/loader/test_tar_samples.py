"""data/loader/tar_samples.py: the lean tar reader gives the samples webdataset's own reader gives
(the oracle: webdataset's tar iteration and grouping, on tarfile's stream mode), from real tars in
every format Python's tarfile and GNU tar write, compressed ones, damaged ones and forged headers;
damage and oversized members are counted as the loader counts them."""
from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander

from data.images.decode import MAX_IMAGE_BYTES
from data.loader.skips import SkipCounter
from data.loader.tar_samples import _shard_samples, tar_samples
from data.shards.tar_writer import write_tar
from data.untrusted_json import MAX_JSON_BYTES

RNG = np.random.default_rng(0)
GNU_TAR = shutil.which("tar")
needs_gnu_tar = pytest.mark.skipif(GNU_TAR is None, reason="GNU tar is not installed")


def _bytes(n: int) -> bytes:
    return RNG.integers(0, 256, n, dtype=np.uint8).tobytes()


def _ours(url: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    skips = SkipCounter(1)
    return list(tar_samples([url], skips)), skips.counts()


def _oracle(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """webdataset's samples of a tar, and whether its reading raised (it stops there)."""
    raised = []

    def stop(err: Exception) -> bool:
        raised.append(err)
        return False

    with open(path, "rb") as f:
        samples = list(group_by_keys(tar_file_expander([{"stream": f, "url": str(path)}], handler=stop)))
    return samples, bool(raised)


def _same_as_oracle(path: Path, damaged: bool = False) -> list[dict[str, Any]]:
    """Asserts our samples of ``path`` are webdataset's and the shard counts as damaged or not
    (damaged wherever webdataset's reading raised, and also where tarfile's stream stops silently)."""
    samples, counts = _ours(str(path))
    expected, raised = _oracle(path)
    assert samples == expected
    assert counts == ({"truncated_tar": 1} if damaged else {})
    assert damaged or not raised
    return samples


def _add(archive: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "",
         size: int | None = None) -> None:
    """A member; ``size`` sets the header's size field of a member without data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if size is None else size
    archive.addfile(info, io.BytesIO(data) if data else None)


ZOO_SAMPLES = 11  # with long names; 9 without


def _zoo(archive: tarfile.TarFile, long_names: bool) -> None:
    """Samples among every kind of member: directories (one with a size field and no data), links,
    a fifo, a device, empty files, sizes on and off block boundaries, long and non-ASCII names."""
    _add(archive, "plain", kind=tarfile.DIRTYPE)
    _add(archive, "plain/000.jpg", _bytes(3000))
    _add(archive, "plain/000.json", b'{"labels": [0]}')
    _add(archive, "sized_dir", kind=tarfile.DIRTYPE, size=1000)  # tarfile reads no data for a directory
    _add(archive, "empty/001.jpg")
    _add(archive, "empty/001.json", b"{}")
    _add(archive, "link/002.jpg", kind=tarfile.SYMTYPE, link="../plain/000.jpg")
    _add(archive, "link/002.json", b"{}")
    _add(archive, "hard/003.jpg", kind=tarfile.LNKTYPE, link="plain/000.jpg")
    _add(archive, "hard/003.json", b"{}")
    _add(archive, "fifo/004.jpg", kind=tarfile.FIFOTYPE)
    _add(archive, "dev/004.jpg", kind=tarfile.CHRTYPE)
    _add(archive, "blocks/005.jpg", _bytes(512))
    _add(archive, "blocks/005.json", _bytes(1024))
    _add(archive, "blocks/005.cls", _bytes(513))
    _add(archive, "contiguous/006.jpg", _bytes(700), kind=tarfile.CONTTYPE)
    _add(archive, "README", b"no suffix: in no sample")
    _add(archive, "deep/" * 30 + "007.jpg", _bytes(100))  # 157 characters: a ustar prefix
    _add(archive, "deep/" * 30 + "007.json", b"{}")
    _add(archive, "名前/写真_008.jpg", _bytes(200))
    _add(archive, "名前/写真_008.json", '{"tags": ["猫"]}'.encode())
    if long_names:  # past what ustar can hold: GNU 'L' records, pax 'path' records
        _add(archive, "x" * 150 + "_009.jpg", _bytes(300))
        _add(archive, "x" * 150 + "_009.json", b"{}")
        _add(archive, "long/" + "é" * 120 + ".jpg", _bytes(50))
    _add(archive, "last_010.jpg", _bytes(40))
    _add(archive, "last_010.json", b"{}")


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_tarfile_format_gives_webdatasets_samples(tmp_path, form, compression):
    path = tmp_path / "zoo.tar"
    with tarfile.open(path, f"w:{compression}", format=form) as archive:
        _zoo(archive, long_names=form != tarfile.USTAR_FORMAT)
    samples = _same_as_oracle(path)
    keys = [s["__key__"] for s in samples]
    assert len(samples) == (9 if form == tarfile.USTAR_FORMAT else ZOO_SAMPLES)
    assert "plain/000" in keys and "名前/写真_008" in keys and "last_010" in keys
    assert all(set(s) == {"__key__", "__url__", "json"} for s in samples if s["__key__"] in ("link/002", "hard/003"))
    if form != tarfile.USTAR_FORMAT:
        assert "x" * 150 + "_009" in keys and "long/" + "é" * 120 in keys


def test_a_pipe_url_gives_the_samples_of_the_file(tmp_path):
    path = tmp_path / "zoo.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        _zoo(archive, long_names=True)
    piped, counts = _ours(f"pipe:cat {path}")
    assert counts == {}
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in piped] == \
           [{k: v for k, v in s.items() if k != "__url__"} for s in _oracle(path)[0]]


def test_a_global_pax_header_is_passed_over(tmp_path):
    # git archive starts every tar with one (a 'comment' record: the commit).
    path = tmp_path / "global.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "0" * 40}) as archive:
        _zoo(archive, long_names=True)
    assert path.read_bytes()[156:157] == tarfile.XGLTYPE
    assert len(_same_as_oracle(path)) == ZOO_SAMPLES


def test_records_tarfile_applies_itself_hand_the_rest_of_the_tar_to_it(tmp_path):
    path = tmp_path / "charset.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"hdrcharset": "BINARY"}) as archive:
        _zoo(archive, long_names=True)
    assert len(_same_as_oracle(path)) == ZOO_SAMPLES


def _block(header: bytes | bytearray, signed: bool = False) -> bytes:
    """``header`` with its checksum recomputed (as some old tars write it, over signed bytes)."""
    block = bytearray(header)
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(struct.unpack("512b" if signed else "512B", block))
    return bytes(block)


def _header(name: str, size: int, kind: bytes = tarfile.REGTYPE, pax: dict[str, str] | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.pax_headers = size, kind, pax or {}
    return info.tobuf(tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT)


def _member(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + bytes(-len(data) % 512)


def _pax(kind: bytes, **records: str | bytes) -> bytes:
    """A pax header of ``kind`` with ``records`` ('<length> <key>=<value>\\n', the length its own)."""
    body = b""
    for key, value in records.items():
        rest = b" %s=%s\n" % (key.encode(), value if isinstance(value, bytes) else value.encode())
        length = len(rest)
        while length != len(rest) + len(str(length)):
            length = len(rest) + len(str(length))
        body += str(length).encode() + rest
    return _header("pax", len(body), kind) + body + bytes(-len(body) % 512)


def _long_name(name: str) -> bytes:
    data = name.encode() + b"\0"
    return _header("././@LongLink", len(data), tarfile.GNUTYPE_LONGNAME) + data + bytes(-len(data) % 512)


def _end() -> bytes:
    return bytes(1024)


def test_forged_headers_are_read_as_tarfile_reads_them(tmp_path):
    base256 = bytearray(_header("b256_000.jpg", 0))
    base256[124:136] = b"\x80" + (300).to_bytes(11, "big")  # GNU base-256, as for members over 8 GiB
    data = _bytes(300)
    signed = _header("é_001.jpg", 20)  # bytes over 127: the signed sum differs from the unsigned one
    base256[108:116] = b"\x80" + (1 << 40).to_bytes(7, "big")  # a uid as GNU tar writes a large one
    base256[100:108] = b" 644   \0"  # a mode as some old tars write it
    v7_dir = bytearray(_header("v7dir/", 700, tarfile.AREGTYPE))  # a V7 directory: no data read
    unknown = _header("volume_003.jpg", 100, b"V")  # an unknown type: its data is skipped
    forged = (_block(base256) + data + bytes(212) + _member("b256_000.json", b"{}")
              + _block(signed, signed=True) + bytes(512) + _member("é_001.json", b"{}")
              + _block(v7_dir) + _member("v7dir/002.json", b"{}") + unknown + bytes(512)
              # pax: a size record over the header's size field (a member over 8 GiB has one), a path
              + _header("short.jpg", 0, pax={"size": "30", "path": "real/004.jpg"}) + bytes(512)
              + _member("real/004.json", b"{}")
              # a chain of extension headers: the first one to name the member wins
              + _pax(tarfile.XHDTYPE, path="pax_005.jpg") + _long_name("long_005.jpg") + _member("plain_005.jpg", b"5")
              + _long_name("long_006.jpg") + _pax(tarfile.XHDTYPE, path="pax_006.jpg") + _member("plain_006.jpg", b"6")
              + _long_name("b" * 200 + ".jpg") + _pax(tarfile.XHDTYPE, size="7")
              + _header("plain_007.jpg", 0) + _bytes(7) + bytes(505)
              # a pax path that is not UTF-8, a pax size that is not a number (0, as tarfile has it)
              + _pax(tarfile.XHDTYPE, path=b"bad_\xff_008.jpg", size="twelve") + _header("plain_008.jpg", 0)
              + _end())
    (tmp_path / "forged.tar").write_bytes(forged)
    samples = _same_as_oracle(tmp_path / "forged.tar")
    assert [s["__key__"] for s in samples] == ["b256_000", "é_001", "v7dir/002", "real/004", "pax_005", "long_006",
                                               "b" * 200, "bad_\udcff_008"]
    assert samples[0]["jpg"] == data and len(samples[3]["jpg"]) == 30 and len(samples[-2]["jpg"]) == 7
    assert samples[-1]["jpg"] == b""


def _three_samples(path: Path) -> dict[str, tarfile.TarInfo]:
    """a, b, c: a 700-byte image (padded to 1024) and a small json each; returns the headers by name."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for key in "abc":
            _add(archive, f"{key}.jpg", _bytes(700))
            _add(archive, f"{key}.json", b'{"labels": [1]}')
    with tarfile.open(path) as archive:
        return {m.name: m for m in archive.getmembers()}


@pytest.mark.parametrize("cut, keys, damaged", [
    ("b.jpg data", ["a"], True),
    ("b.jpg padding", ["a", "b"], True),
    ("b.json header", ["a", "b"], True),  # tarfile's stream ends here silently
    ("c.jpg header start", ["a", "b"], False),  # a tar without end-of-archive blocks
    ("b.json checksum", ["a", "b"], True),  # tarfile's stream ends here silently
    ("a.jpg checksum", [], True),
    ("empty", [], True),
    ("not a tar", [], True),
])
def test_a_damaged_tar_keeps_the_samples_before_the_damage(tmp_path, cut, keys, damaged):
    path = tmp_path / "cut.tar"
    members = _three_samples(path)
    whole = bytearray(path.read_bytes())
    b_jpg, b_json, c_jpg = members["b.jpg"], members["b.json"], members["c.jpg"]
    damaged_bytes = {
        "b.jpg data": whole[:b_jpg.offset_data + 100],
        "b.jpg padding": whole[:b_jpg.offset_data + 800],
        "b.json header": whole[:b_json.offset + 100],
        "c.jpg header start": whole[:c_jpg.offset],
        "b.json checksum": whole[:b_json.offset] + b"B" + whole[b_json.offset + 1:],
        "a.jpg checksum": b"A" + whole[1:],
        "empty": b"",
        "not a tar": b"not a tar file at all" * 30,
    }[cut]
    path.write_bytes(damaged_bytes)
    samples = _same_as_oracle(path, damaged)
    assert [s["__key__"] for s in samples] == keys
    assert cut != "b.jpg padding" or "json" not in samples[1]


def test_an_unreadable_header_past_the_first_is_damage(tmp_path):
    path = tmp_path / "t.tar"
    for field in (slice(124, 136), slice(100, 108), slice(337, 345)):  # size, mode (unused), devminor (unused)
        not_octal = bytearray(_header("b.jpg", 0))
        not_octal[field] = b"12x".rjust(field.stop - field.start - 1, b"0") + b"\0"
        path.write_bytes(_member("a.jpg", b"1") + _block(not_octal) + _member("c.jpg", b"3") + _end())
        assert [s["__key__"] for s in _same_as_oracle(path, damaged=True)] == ["a"]  # tarfile stops silently
    # a pax record of length 0
    zero_length = _pax(tarfile.XHDTYPE, path="b.jpg")[:512] + b"0 path=b.jpg\n".ljust(512, b"\0")
    path.write_bytes(_member("a.jpg", b"1") + zero_length + _member("b.jpg", b"2") + _end())
    assert [s["__key__"] for s in _same_as_oracle(path, damaged=True)] == ["a"]


def test_headers_this_reader_leaves_to_tarfile_are_read_by_tarfile_from_there_on(tmp_path):
    path = tmp_path / "t.tar"
    negative = bytearray(_header("b.jpg", 0))
    negative[124:136] = b"\xff" * 12  # base-256 -1: tarfile gives an empty member
    large_pax = _pax(tarfile.XHDTYPE, comment="x" * (1 << 20), path="d.jpg")  # over 1 MiB of records
    for odd, key in ((_block(negative), "b"), (large_pax + _member("b.jpg", b"2"), "d")):
        path.write_bytes(_member("a.jpg", b"1") + odd + _member("c.jpg", b"3") + _end())
        assert [s["__key__"] for s in _same_as_oracle(path)] == ["a", key, "c"]


class _Trickle:
    """A real file read at most 100 bytes at a time, as a socket or a raw pipe may give it."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")

    def read(self, size: int) -> bytes:
        return self._file.read(min(size, 100))


def test_a_stream_that_gives_less_than_asked_is_read_whole(tmp_path):
    path = tmp_path / "zoo.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        _zoo(archive, long_names=True)
    skips = SkipCounter(1)
    assert list(_shard_samples(_Trickle(path), str(path), skips)) == _oracle(path)[0] and skips.counts() == {}


def test_the_first_zero_block_ends_the_tar_and_what_follows_is_never_read(tmp_path):
    path = tmp_path / "t.tar"
    _three_samples(path)
    whole = path.read_bytes()
    path.write_bytes(whole + b"trailing garbage" * 1000)
    assert [s["__key__"] for s in _same_as_oracle(path)] == ["a", "b", "c"]
    path.write_bytes(_member("a.jpg", b"1") + bytes(512) + whole)  # one zero block, then members
    assert [s["__key__"] for s in _same_as_oracle(path)] == ["a"]


def test_an_extension_header_with_no_member_after_it_is_damage(tmp_path):
    path = tmp_path / "t.tar"
    for tail in (_end(), b"", _long_name("x.jpg")[:600]):
        path.write_bytes(_member("a.jpg", b"1") + _long_name("b.jpg") + tail)
        assert [s["__key__"] for s in _same_as_oracle(path, damaged=True)] == ["a"]


def test_a_cut_compressed_tar_is_damage(tmp_path):
    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for key in "abc":
            _add(archive, f"{key}.jpg", _bytes(5000))
    path.write_bytes(path.read_bytes()[:8000])
    assert [s["__key__"] for s in _same_as_oracle(path, damaged=True)] == ["a"]


class _Reads:
    """A real file whose largest read is recorded."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")
        self.largest = 0

    def read(self, size: int) -> bytes:
        self.largest = max(self.largest, size)
        return self._file.read(size)


def _huge_tar(path: Path, cut: bool = False) -> None:
    """A sample whose image is past the image cap (a hole in the file: no disk), one whose json is
    past the json cap, and a good sample; ``cut``: the tar ends inside the huge image."""
    with open(path, "wb") as f:
        f.write(_member("huge.json", b"{}") + _header("huge.jpg", MAX_IMAGE_BYTES + 1))
        if cut:
            f.truncate(f.tell() + MAX_IMAGE_BYTES // 2)
            return
        f.seek(MAX_IMAGE_BYTES + 1 + 511, io.SEEK_CUR)
        f.write(_member("big.jpg", b"x") + _member("big.json", b" " * (MAX_JSON_BYTES + 1))
                + _member("ok.jpg", b"y") + _member("ok.json", b"{}") + _end())


@pytest.mark.parametrize("cut", [False, True])
def test_an_oversized_member_is_skipped_in_bounded_reads(tmp_path, cut):
    path = tmp_path / "huge.tar"
    _huge_tar(path, cut)
    stream, skips = _Reads(path), SkipCounter(1)
    samples = list(_shard_samples(stream, str(path), skips))
    assert stream.largest <= (1 << 20) + 512
    counts = skips.counts()
    if cut:
        assert samples == [] and counts == {"too_large": 1}
    else:
        assert [s["__key__"] for s in samples] == ["ok"] and counts == {"too_large": 2}
    # tar_samples counts the cut of the tar itself
    assert _ours(str(path))[1] == ({"too_large": 1, "truncated_tar": 1} if cut else {"too_large": 2})


def _gnu_tar(source: Path, out: Path, form: str, sparse: bool = False) -> Path:
    subprocess.run([GNU_TAR, f"--format={form}", "--sort=name", *(["--sparse"] if sparse else []), "-cf", str(out),
                    "-C", str(source), "."], check=True, capture_output=True)
    return out


def _tree(root: Path) -> Path:
    """A folder of samples with a long and a non-ASCII name, a symbolic and a hard link, an empty
    image, a directory with dots."""
    (root / "d.x").mkdir(parents=True)
    for i, name in enumerate(["a_000", "d.x/b_001", "c" * 120 + "_002", "名前_003", "empty_004"]):
        (root / f"{name}.jpg").write_bytes(b"" if name.startswith("empty") else _bytes(600 + 100 * i))
        (root / f"{name}.json").write_bytes(b'{"labels": [%d]}' % i)
    (root / "e_005.jpg").symlink_to("a_000.jpg")
    (root / "f_006.jpg").hardlink_to(root / "a_000.jpg")
    (root / "e_005.json").write_bytes(b"{}")
    (root / "f_006.json").write_bytes(b"{}")
    return root


@needs_gnu_tar
@pytest.mark.parametrize("form", ["gnu", "oldgnu", "posix", "ustar"])
def test_gnu_tar_archives_give_webdatasets_samples(tmp_path, form):
    tree = _tree(tmp_path / "tree")
    if form == "ustar":
        for suffix in ("jpg", "json"):
            (tree / f"{'c' * 120}_002.{suffix}").unlink()  # too long a name for ustar
    samples = _same_as_oracle(_gnu_tar(tree, tmp_path / "t.tar", form))
    assert "./a_000" in [s["__key__"] for s in samples] and len(samples) >= 5


@needs_gnu_tar
@pytest.mark.parametrize("form", ["gnu", "posix"])
def test_a_sparse_member_is_read_by_tarfile_from_there_on(tmp_path, form):
    tree = _tree(tmp_path / "tree")
    (tree / "s_007.cls").write_bytes(b"before")  # read by our reader
    with open(tree / "s_007.png", "wb") as f:  # a hole between two runs of data
        f.write(_bytes(5000))
        f.seek(200_000)
        f.write(_bytes(3000))
    (tree / "s_007.txt").write_bytes(b"after")  # read by tarfile, in the same sample
    (tree / "t_008.jpg").write_bytes(b"last")
    tar = _gnu_tar(tree, tmp_path / "t.tar", form, sparse=True)
    with tarfile.open(tar) as archive:
        if archive.getmember("./s_007.png").sparse is None:
            pytest.skip("this filesystem keeps no holes, so GNU tar wrote no sparse member")
    samples = _same_as_oracle(tar)
    by_key = {s["__key__"]: s for s in samples}
    assert by_key["./s_007"]["png"] == (tree / "s_007.png").read_bytes()
    assert set(by_key["./s_007"]) == {"__key__", "__url__", "cls", "png", "txt"} and "./t_008" in by_key


def test_shards_of_our_tar_writer(tmp_path):
    members = [(f"{i:06d}.{suffix}", _bytes(int(RNG.integers(0, 3000)))) for i in range(50)
               for suffix in ("jpg", "json")]
    write_tar(tmp_path / "s.tar", members)
    samples = _same_as_oracle(tmp_path / "s.tar")
    assert [s["jpg"] for s in samples] == [data for name, data in members if name.endswith("jpg")]

