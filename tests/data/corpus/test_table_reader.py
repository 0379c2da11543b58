"""The table reader: JSONL, CSV, TSV (plain, .gz, .bz2) and Parquet files written by the test, and
the real Flickr Dresden table from ../shared/data."""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import pickle
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.corpus.record import MalformedReport
from data.corpus.table import TableReader, infer_format
from data.errors import UserError


def read_all(reader: TableReader, tags_only: bool = False) -> tuple[list, MalformedReport]:
    """(key, tags) of every row, chunk by chunk, and the malformed report."""
    rows, report = [], MalformedReport()
    for chunk in reader.chunks():
        batch = reader.read_chunk(pickle.loads(pickle.dumps(chunk)), tags_only=tags_only)
        rows += list(zip(batch.keys.to_pylist(), batch.tags.to_pylist()))
        report.extend(batch.malformed)
    return rows, report


# --------------------------------------------------------------------------- the real table

DRESDEN = "flickr_dresden_tags/flickr_dresden_cc-by-licenses.csv"


def test_flickr_dresden_against_an_independent_count(shared_data: Path):
    path = shared_data / DRESDEN
    with open(path, newline="", encoding="utf-8") as f:
        expected = [(row["guid"], [t for t in row["hashtags"].split(";") if t]) for row in csv.DictReader(f)]
    reader = TableReader(path, key_field="guid", tags_field="hashtags", tags_delimiter=";")
    for block_bytes in (1 << 25, 200_000):          # one block, and 17 blocks cut at line ends
        reader.block_bytes = block_bytes
        rows, report = read_all(reader)
        assert rows == expected and report.total == 0
    assert len(rows) == 17_879 and sum(not tags for _, tags in rows) == 4_017
    assert Counter(t for _, tags in rows for t in tags).most_common(1)[0][0] == "dresden"
    record = next(reader.records())
    assert record.image is None and record.meta["user_guid"] == "f2487030bdaa29aa85138cac1f354826"
    with pytest.raises(UserError, match=r"has no key column 'guids' .*did you mean 'guid'"):
        TableReader(path, key_field="guids", tags_field="hashtags")


# --------------------------------------------------------------------------------- JSONL

JSONL_LINES = [
    '{"key": "a", "tags": ["Brown Bear", "forest"], "image": "img/a.jpg", "views": 3}',
    '{"key": "b", "tags": "lake,swan,", "image": "https://example.org/b.jpg", "views": 4}',
    '',                                                    # blank line: no row, not malformed
    '{"key": 7, "tags": [], "image": null, "views": 5}',
    '{"key": "c", "tags": [ "unterminated',                # invalid JSON
    '["not", "an", "object"]',
    '{"key": null, "tags": ["x"]}',                        # null key
    '{"key": "d", "tags": 12}',                            # tags of the wrong type
    '{"key": "e", "tags": ["ok", null], "image": 3}',      # image of the wrong type
    '{"key": "f", "views": 6}',                            # no tags: an image without tags
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_jsonl_rows_and_malformed_lines(tmp_path: Path):
    reader = TableReader(write_jsonl(tmp_path / "t.jsonl", JSONL_LINES))
    rows, report = read_all(reader)
    assert rows == [("a", ["Brown Bear", "forest"]), ("b", ["lake", "swan"]), ("7", []), ("f", [])]
    assert report.counts == {"invalid JSON": 1, "JSON line is not an object": 1, "missing key": 1,
                             "tags are not a list of strings or a delimited string": 1,
                             "image is not a string": 1}
    assert report.examples == {"invalid JSON": [5], "JSON line is not an object": [6], "missing key": [7],
                            "tags are not a list of strings or a delimited string": [8],
                            "image is not a string": [9]}
    records = list(reader.records())
    assert records[0].image == tmp_path / "img" / "a.jpg"
    assert records[1].image == "https://example.org/b.jpg"
    assert records[2].image is None and records[0].meta == {"views": 3}


def test_jsonl_columnar_and_line_paths_agree(tmp_path: Path):
    good = [line for i, line in enumerate(JSONL_LINES) if i in (0, 3)]
    mixed = good + ['{"key": "g", "tags": "one,two"}']     # tag types differ: the line-by-line path
    fast, _ = read_all(TableReader(write_jsonl(tmp_path / "good.jsonl", good)))
    slow, _ = read_all(TableReader(write_jsonl(tmp_path / "mixed.jsonl", mixed)))
    assert slow[:2] == fast and slow[2] == ("g", ["one", "two"])


def test_jsonl_null_key_line_number_with_blank_lines_in_the_columnar_path(tmp_path: Path):
    path = write_jsonl(tmp_path / "t.jsonl", ['{"key": "a", "tags": ["x"]}', "", "",
                                              '{"key": null, "tags": ["y"]}'])
    rows, report = read_all(TableReader(path))
    assert rows == [("a", ["x"])] and report.examples == {"missing key": [4]}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.bz2"])
def test_jsonl_blocks_and_compression(tmp_path: Path, suffix: str):
    lines = [json.dumps({"key": f"k{i}", "tags": [f"t{i % 7}", "common"]}) for i in range(3000)]
    lines[1234] = "{broken"
    reader = TableReader(write_jsonl(tmp_path / f"t{suffix}", lines), block_bytes=4096)
    chunks = list(reader.chunks())
    assert len(chunks) > 10 and chunks[0].first_line == 1
    rows, report = read_all(reader)
    assert len(rows) == 2999 and rows[1234] == ("k1235", ["t3", "common"])
    assert report.examples == {"invalid JSON": [1235]}


def test_invalid_utf8_lines_are_counted(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"key": "a", "tags": ["x"]}\n{"key": "b", "tags": ["\xff"]}\n{"key": "c", "tags": []}\n')
    rows, report = read_all(TableReader(path))
    assert [k for k, _ in rows] == ["a", "c"] and report.examples == {"invalid UTF-8": [2]}
    path = tmp_path / "t.csv"
    path.write_bytes(b"key,tags\na,x\nb,\xfe\xff\nc,y\n")
    rows, report = read_all(TableReader(path))
    assert rows == [("a", ["x"]), ("c", ["y"])] and report.examples == {"invalid UTF-8": [3]}


def test_the_shared_line_rules_come_before_the_parser(tmp_path: Path):
    """A line too long, with a NUL byte or not UTF-8 is reported for that, once, even when the
    parser would reject it too or would see no row in it (data/corpus/lines.py)."""
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"key": "a", "tags": ["x"]}\n{"key": "b", "tags": [\xff\n\x00\x00\x00\n'
                     b'{"key": "c", "tags": ["' + b"y" * 200 + b'"]}\n{"key": "d", "tags": []}\n')
    rows, report = read_all(TableReader(path, max_line_bytes=100))
    assert [k for k, _ in rows] == ["a", "d"]
    assert report.examples == {"invalid UTF-8": [2], "NUL byte": [3], "line too long": [4]}
    path = tmp_path / "t.csv"
    path.write_bytes(b"key,tags\na,x\nb,\x00,extra\nc,y\n")
    rows, report = read_all(TableReader(path))
    assert rows == [("a", ["x"]), ("c", ["y"])] and report.examples == {"NUL byte": [3]}


# ------------------------------------------------------------------------------ CSV / TSV

def test_csv_delimited_tags_field_counts_and_line_numbers(tmp_path: Path):
    path = tmp_path / "photos.csv"
    path.write_text('id,labels,file\n'
                    'p1,"dog,beach",p1.jpg\n'
                    'p2,,p2.jpg\n'                          # empty tag field: no tags, not malformed
                    'p3,cat\n'                              # wrong field count
                    ',sky,p4.jpg\n'                         # empty key
                    'p5,"quoted ""tag"",x",p5.jpg\n'
                    'p6,a,b,c,d\n')                         # wrong field count
    reader = TableReader(path, key_field="id", tags_field="labels", image_field="file")
    rows, report = read_all(reader)
    assert rows == [("p1", ["dog", "beach"]), ("p2", []), ("p5", ['quoted "tag"', "x"])]
    assert report.examples == {"wrong number of fields": [4, 7], "missing key": [5]}
    assert next(reader.records()).image == tmp_path / "p1.jpg"
    tags_only = reader.read_chunk(next(reader.chunks()), tags_only=True)
    assert tags_only.meta is None and tags_only.images is None and len(tags_only) == 3


def test_csv_blocks_keep_line_numbers(tmp_path: Path):
    lines = ["key,tags"] + [f"k{i},t{i % 5};u" for i in range(2000)]
    lines[1500] = "k-bad"                                   # line 1501
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    reader = TableReader(path, tags_delimiter=";", block_bytes=2048)
    assert len(list(reader.chunks())) > 5
    rows, report = read_all(reader)
    assert len(rows) == 1999 and report.examples == {"wrong number of fields": [1501]}
    assert rows[1500] == ("k1501", ["t1", "u"])


def test_tsv_and_explicit_format(tmp_path: Path):
    path = tmp_path / "t.txt"
    path.write_text("key\ttags\timage\na\tx,y\thttp://h/a.jpg\n")
    with pytest.raises(UserError, match="cannot tell the table format"):
        TableReader(path)
    reader = TableReader(path, format="tsv")
    assert read_all(reader)[0] == [("a", ["x", "y"])]
    assert next(reader.records()).image == "http://h/a.jpg"
    assert reader.describe()["source"] == "tsv"
    with pytest.raises(UserError, match="unknown table format 'xlsx'"):
        TableReader(path, format="xlsx")


def test_empty_and_header_only_files_are_fine(tmp_path: Path):
    for name, text in (("e.csv", ""), ("h.csv", "key,tags\n"), ("e.jsonl", ""), ("b.jsonl", "\n\n")):
        (tmp_path / name).write_text(text)
        assert read_all(TableReader(tmp_path / name)) == ([], MalformedReport())


# -------------------------------------------------------------------------------- Parquet

def test_parquet_row_groups_list_tags_and_row_numbers(tmp_path: Path):
    n = 1000
    keys = [f"k{i}" for i in range(n)]
    keys[777] = None
    table = pa.table({"key": keys, "tags": [[f"t{i % 3}", ""] for i in range(n)],
                      "image": [f"img/{i}.jpg" for i in range(n)], "w": list(range(n))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=128)
    reader = TableReader(tmp_path / "t.parquet")
    assert len(list(reader.chunks())) == 8
    rows, report = read_all(reader)
    assert len(rows) == n - 1 and rows[0] == ("k0", ["t0"]) and report.examples == {"missing key": [778]}
    fast, _ = read_all(reader, tags_only=True)
    assert fast == rows
    record = list(reader.records())[5]
    assert record.meta == {"w": 5} and record.image == tmp_path / "img" / "5.jpg"


def test_parquet_tags_of_the_wrong_type_are_malformed(tmp_path: Path):
    pq.write_table(pa.table({"key": ["a", "b"], "tags": [1, 2]}), tmp_path / "t.parquet")
    rows, report = read_all(TableReader(tmp_path / "t.parquet"))
    assert rows == [] and report.counts == {"tags are not a list of strings or a delimited string": 2}


# ------------------------------------------------------------------------ columns and errors

def test_column_errors_name_file_column_and_choices(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("key,hashtags,img\na,x,a.jpg\n")
    with pytest.raises(UserError, match=r"t.csv has no tags column 'tags' \(columns: key, hashtags, img\)"
                                        r".*--tags-field.*did you mean 'hashtags'"):
        TableReader(path)
    with pytest.raises(UserError, match="has no image column 'picture'"):
        TableReader(path, tags_field="hashtags", image_field="picture")
    assert TableReader(path, tags_field="hashtags").image_field is None        # default: optional
    with pytest.raises(UserError, match="not found"):
        TableReader(tmp_path / "missing.csv")


def test_infer_format():
    assert infer_format(Path("a/b.tags.csv.gz")) == ("csv", ".gz")
    assert infer_format(Path("x.NDJSON")) == ("jsonl", None)
    assert infer_format(Path("x.parquet")) == ("parquet", None)


def test_reader_works_in_another_process(tmp_path: Path):
    reader = TableReader(write_jsonl(tmp_path / "t.jsonl", JSONL_LINES), block_bytes=64)
    chunks = list(reader.chunks())
    with ProcessPoolExecutor(max_workers=1) as pool:
        batches = list(pool.map(reader.read_chunk, chunks))
    assert [k for b in batches for k in b.keys.to_pylist()] == ["a", "b", "7", "f"]


def test_damaged_inputs_give_one_clear_line(tmp_path: Path):
    garbage = tmp_path / "g.jsonl"
    garbage.write_text("not json\nnor this\n")
    with pytest.raises(UserError, match="no JSON object in its first 1 MiB"):
        TableReader(garbage)
    lines = [json.dumps({"key": f"k{i}", "tags": ["t"]}) for i in range(100_000)]
    damaged = write_jsonl(tmp_path / "d.jsonl.gz", lines)
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    reader = TableReader(damaged, block_bytes=1 << 18)
    with pytest.raises(UserError, match=r"d.jsonl.gz: cannot read past line \d+"):
        read_all(reader)


def test_damaged_parquet_row_group_costs_only_its_rows(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(300)], "tags": [["t"]] * 300}), path,
                   row_group_size=100, compression="none")
    reader = TableReader(path)
    middle = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = middle.data_page_offset
    data[start:start + 40] = b"\xff" * 40         # garble the second row group's key pages
    path.write_bytes(bytes(data))
    rows, report = read_all(reader)
    assert len(rows) == 200 and report.examples == {"unreadable Parquet row group": [101]}
