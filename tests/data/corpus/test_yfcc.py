"""The YFCC100M reader on real metadata rows and on files the tests write, malformed rows included."""
from __future__ import annotations

import bz2
import urllib.parse
from pathlib import Path

import pytest

from data.corpus import SOURCES, open_corpus
from data.corpus.lines import BAD_UTF8, NUL_BYTE
from data.corpus.yfcc import (COLUMNS_23, MALFORMED_COLUMNS, SKIPPED_LICENSE, SKIPPED_VIDEO, YfccReader,
                              encode_tags, format_line, license_family)
from data.errors import UserError

SAMPLE = "yfcc100m_sample"
WEBSCOPE = "yfcc100m_dataset-head2000.unique.tsv"
MIRROR = "yfcc100m_dataset_25col_head2000.tsv"
HUNDRED = "yfcc100m_dataset-100-temp-0"


def expected_records(path: Path, *, machine_tags: bool = False, videos: bool = False,
                     families: set[str] | None = None) -> list[tuple[str, list[str]]]:
    """(key, decoded tags) of a 23-column file, parsed the plain way: a loop over split lines."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cell = dict(zip(COLUMNS_23, line.split("\t")))
        if cell["marker"] == "1" and not videos:
            continue
        if families is not None and license_family(cell["license_url"], cell["license_name"]) not in families:
            continue
        raw = cell["user_tags"].split(",") + (cell["machine_tags"].split(",") if machine_tags else [])
        out.append((cell["photo_id"], [urllib.parse.unquote_plus(t) for t in raw if t]))
    return out


def key_tags(reader: YfccReader) -> list[tuple[str, list[str]]]:
    return [(record.key, record.tags) for record in reader.records()]


# -- the real rows ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def webscope(shared_data: Path) -> Path:
    return shared_data / SAMPLE / WEBSCOPE


def test_webscope_layout_matches_plain_parse(webscope):
    reader = YfccReader(webscope)
    assert reader.layout == "23"
    records = key_tags(reader)
    assert records == expected_records(webscope)
    assert len(records) == 1994 and reader.skipped == {SKIPPED_VIDEO: 6}
    assert sum(not tags for _, tags in records) > 800  # empty tag fields are rows too


def test_known_row_and_its_metadata(webscope):
    record = next(r for r in YfccReader(webscope).records() if r.key == "588715640")
    assert record.tags == ["britain", "flickr", "london", "meetup", "tate"]
    assert record.image == "http://farm2.staticflickr.com/1373/588715640_40971fc6fa.jpg"
    assert record.meta["license_url"] == "http://creativecommons.org/licenses/by/2.0/"
    assert record.meta["user_nsid"] == "23829501@N00" and record.meta["marker"] == 0
    assert record.meta["longitude"] is None  # not geotagged


def test_cjk_tags_and_html_descriptions(webscope):
    records = {r.key: r for r in YfccReader(webscope).records()}
    assert records["6782131403"].tags == ["北藝大", "子玲", "2012", "d7000"]
    # Row 3's description is URL-encoded HTML with an <a href>; it must not disturb the columns.
    assert records["2297552664"].tags == []
    assert records["2297552664"].meta["title"] == "denise's peanut chicken"


def test_mirror_layout_reads_the_same_rows(shared_data, webscope):
    mirror = YfccReader(shared_data / SAMPLE / MIRROR)
    assert mirror.layout == "25"
    assert key_tags(mirror) == key_tags(YfccReader(webscope))
    first = next(mirror.records())
    assert first.meta["hash"] == "4e2f7a26a1dfbf165a7e30bdabf7e72a"  # kept as written
    assert YfccReader(shared_data / SAMPLE / MIRROR, layout="25").layout == "25"


def test_bz2_equals_plain(shared_data, monkeypatch, tmp_path):
    plain = shared_data / SAMPLE / HUNDRED
    expected = list(YfccReader(plain).records())
    assert len(expected) == 100
    assert list(YfccReader(plain.with_name(HUNDRED + ".bz2")).records()) == expected
    # Without bzip2 tools on PATH the in-process decompressor thread takes over.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert list(YfccReader(plain.with_name(HUNDRED + ".bz2"), block_size=4096).records()) == expected


def test_videos_kept_on_request(webscope):
    reader = YfccReader(webscope, include_videos=True)
    records = key_tags(reader)
    assert len(records) == 2000 and records == expected_records(webscope, videos=True)
    assert not reader.skipped


def test_licence_filter(webscope):
    reader = YfccReader(webscope, licenses="by,by-sa")
    assert key_tags(reader) == expected_records(webscope, families={"by", "by-sa"})
    kept = len(expected_records(webscope, families={"by", "by-sa"}))
    assert 500 < kept < 545  # 345 CC BY + 200 CC BY-SA rows, less their videos
    assert reader.skipped[SKIPPED_LICENSE] == 1994 - kept
    commercial = YfccReader(webscope, licenses="commercial")
    assert key_tags(commercial) == expected_records(webscope, families={"by", "by-sa", "by-nd"})


def test_machine_tags_option(webscope):
    with_machine = key_tags(YfccReader(webscope, machine_tags=True))
    assert with_machine == expected_records(webscope, machine_tags=True)
    assert with_machine != key_tags(YfccReader(webscope))


def test_tags_only_batches_match_full_batches(webscope):
    reader = YfccReader(webscope, block_size=50_000)
    chunks = list(reader.chunks())
    assert len(chunks) > 10
    for chunk in chunks:
        full, light = reader.read_chunk(chunk), reader.read_chunk(chunk, tags_only=True)
        assert light.keys.equals(full.keys) and light.tags.equals(full.tags)
        assert light.meta is None and light.images is None


# -- files the tests write -------------------------------------------------------------------------

def good_line(photo: int, tags: list[str], *, marker: int = 0, machine: str = "",
              license_url: str = "http://creativecommons.org/licenses/by/2.0/") -> str:
    return format_line({
        "photo_id": photo, "user_nsid": "1@N00", "title": "a+title", "description": "%3Cb%3Ehi%3C%2Fb%3E",
        "user_tags": encode_tags(tags), "machine_tags": machine, "license_url": license_url,
        "license_name": "Attribution License",
        "download_url": f"http://farm1.staticflickr.com/1/{photo}_abc.jpg", "marker": marker})


def write_malformed_corpus(path: Path, *, crlf: bool = False) -> dict[int, str]:
    """A corpus with bad lines at known line numbers; returns {line: reason}."""
    lines = [good_line(i, [f"tag{i % 7}", "Brown Bear"]).encode() for i in range(1, 31)]
    lines[2] = b"3\tonly\tthree columns\n"                               # line 3
    lines[4] = lines[4].replace(b"a+title", b"bad\xff\xfebytes")          # line 5
    lines[6] = lines[6].replace(b"a+title", b"nul\x00byte")               # line 7
    lines[8] = b"\n"                                                      # line 9: empty
    lines[19] = lines[19].replace(b"a+title", b"\xc3")                    # line 20: truncated UTF-8
    lines[29] = lines[29].rstrip(b"\n")                                   # last line: no newline
    data = b"".join(lines)
    path.write_bytes(data.replace(b"\n", b"\r\n") if crlf else data)
    return {3: MALFORMED_COLUMNS, 5: BAD_UTF8, 7: NUL_BYTE, 9: MALFORMED_COLUMNS, 20: BAD_UTF8}


def malformed_of(reader: YfccReader) -> list[tuple[int, str]]:
    return [row for chunk in reader.chunks() for row in reader.read_chunk(chunk, tags_only=True).malformed]


@pytest.mark.parametrize("block_size", [64, 700, 1 << 20])
def test_malformed_rows_reported_by_line_number(tmp_path, block_size):
    path = tmp_path / "yfcc.tsv"
    bad = write_malformed_corpus(path)
    reader = YfccReader(path, block_size=block_size)
    assert malformed_of(reader) == sorted(bad.items())
    records = list(reader.records())
    assert [r.key for r in records] == [str(i) for i in range(1, 31) if i not in bad]
    assert records[-1].tags == ["tag2", "Brown Bear"]  # the unterminated last line is whole


def test_malformed_rows_in_bz2_and_crlf_files(tmp_path):
    plain = tmp_path / "yfcc.tsv"
    bad = write_malformed_corpus(plain)
    expected = list(YfccReader(plain).records())
    packed = tmp_path / "yfcc.tsv.bz2"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    assert malformed_of(YfccReader(packed, block_size=300)) == sorted(bad.items())
    assert list(YfccReader(packed, block_size=300).records()) == expected
    crlf = tmp_path / "crlf.tsv"
    write_malformed_corpus(crlf, crlf=True)
    assert malformed_of(YfccReader(crlf, block_size=500)) == sorted(bad.items())
    assert [(r.key, r.tags, r.meta["marker"]) for r in YfccReader(crlf).records()] == \
        [(r.key, r.tags, r.meta["marker"]) for r in expected]


def test_machine_tags_and_videos_in_written_file(tmp_path):
    path = tmp_path / "yfcc.tsv"
    path.write_text(good_line(1, ["sea"], machine="vision%3Aoutdoor%3D099,taken%3Ayear%3D2010")
                    + good_line(2, ["movie"], marker=1) + good_line(3, []))
    assert key_tags(YfccReader(path)) == [("1", ["sea"]), ("3", [])]
    assert key_tags(YfccReader(path, machine_tags=True, include_videos=True)) == [
        ("1", ["sea", "vision:outdoor=099", "taken:year=2010"]), ("2", ["movie"]), ("3", [])]


def test_licence_families():
    assert license_family("http://creativecommons.org/licenses/by-nc-sa/2.0/") == "by-nc-sa"
    assert license_family("https://creativecommons.org/licenses/by/4.0/legalcode") == "by"
    assert license_family("http://creativecommons.org/publicdomain/zero/1.0/") == "cc0"
    assert license_family("http://creativecommons.org/publicdomain/mark/1.0/") == "pdm"
    assert license_family("", "Attribution-NoDerivs License") == "by-nd"
    assert license_family("http://example.com/", "All rights reserved") is None


def test_bad_input_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        YfccReader(tmp_path / "missing.tsv")
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("a\tb\tc\n" * 5)
    with pytest.raises(UserError, match=r"does not look like YFCC100M.*3 tab-separated columns"):
        YfccReader(wrong)
    with pytest.raises(UserError, match="unknown licence family 'cc-by-4'"):
        YfccReader(wrong, layout="23", licenses="by,cc-by-4")
    with pytest.raises(UserError, match="unknown YFCC100M layout"):
        YfccReader(wrong, layout="24")
    truncated = tmp_path / "cut.tsv.bz2"
    packed = bz2.compress("".join(good_line(i, [f"t{i * 7919 % 10007}"]) for i in range(5000)).encode())
    truncated.write_bytes(packed[:len(packed) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        list(YfccReader(truncated, layout="23").chunks())
    monkeypatch.setenv("PATH", str(tmp_path))  # the in-process decompressor says the same
    with pytest.raises(UserError, match="truncated or corrupt"):
        list(YfccReader(truncated, layout="23").chunks())


def test_empty_file_has_no_records(tmp_path):
    path = tmp_path / "empty.tsv"
    path.write_bytes(b"")
    assert list(YfccReader(path).records()) == []


def test_registry(tmp_path):
    path = tmp_path / "yfcc.tsv"
    path.write_text(good_line(1, ["sea"]))
    reader = open_corpus("yfcc100m", path, layout=None, machine_tags=True, tags_field=None)
    assert isinstance(reader, YfccReader) and reader.machine_tags and reader.layout == "23"
    with pytest.raises(UserError, match="unknown corpus source 'flickr'; use one of: " + ", ".join(SOURCES)):
        open_corpus("flickr", path)
    with pytest.raises(UserError, match="--tags-field does not apply to --source yfcc100m"):
        open_corpus("yfcc100m", path, tags_field="tags")
