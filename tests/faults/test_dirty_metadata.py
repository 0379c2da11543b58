"""Metadata with malformed rows, bad encodings and NUL bytes: scripts/build_vocab.py completes, every
good row is counted exactly, and every bad one is reported by reason and line number in the
vocabulary report, in each text format (YFCC100M TSV plain and bz2, JSONL, CSV). The faults sit
at known lines, the rest of the file is ordinary rows; block boundaries fall between and inside
them (several blocks per file for the bz2 reader)."""
from __future__ import annotations

import bz2
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from data.corpus.lines import BAD_UTF8, NUL_BYTE
from data.corpus.yfcc import MALFORMED_COLUMNS, encode_tags, format_line
from tests.faults.child_process import REPO, run

ROWS = 300
WORDS = ["dog", "cat", "bird", "fish"]


def _tags(i: int) -> list[str]:
    return [WORDS[i % 4], WORDS[(i // 4) % 4]]


def _good_counts(bad_rows: set[int]) -> dict[str, int]:
    """Images per tag over the rows that are not bad."""
    return dict(Counter(tag for i in range(ROWS) if i not in bad_rows for tag in set(_tags(i))))


# row index -> (damage, reason the reader reports); the line number is row index + 1 (+1 for a CSV header)
YFCC_FAULTS = {
    7: (lambda line: b"7\tonly\tthree\n", MALFORMED_COLUMNS),
    40: (lambda line: line.replace(b"\t", b"\t\t", 1), MALFORMED_COLUMNS),  # one column too many
    99: (lambda line: line.replace(b"dog", b"d\xffog"), BAD_UTF8),
    100: (lambda line: line[:-3] + b"\xc3\n", BAD_UTF8),  # cut inside a multi-byte character
    150: (lambda line: line.replace(b"\t", b"\t\x00", 3), NUL_BYTE),
    151: (lambda line: b"\x00" * 40 + b"\n", NUL_BYTE),  # a NUL-filled line (a torn write)
}


def _yfcc_lines() -> list[bytes]:
    return [format_line({"photo_id": i, "user_tags": encode_tags(_tags(i)), "title": "a+photo"}).encode()
            for i in range(ROWS)]


def _damaged(lines: list[bytes], faults: dict) -> list[bytes]:
    damaged = [faults[i][0](line) if i in faults else line for i, line in enumerate(lines)]
    assert all(damaged[i] != lines[i] for i in faults), "every planted fault changes its line"
    return damaged


def _expected(faults: dict, header: int = 0) -> dict[str, list[int]]:
    lines: dict[str, list[int]] = {}
    for i, (_, reason) in sorted(faults.items()):
        lines.setdefault(reason, []).append(i + 1 + header)
    return lines


def _build_vocab(source: str, corpus: Path, *extra: str) -> tuple[dict, dict]:
    out = corpus.with_name("vocab.json")
    done = run([sys.executable, str(REPO / "scripts" / "build_vocab.py"), "--source", source, "--input", str(corpus),
                "--out", str(out), "--workers", "2", "--no-progress", *extra], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    vocab = json.loads(out.read_text())
    return {label["tag"]: label["count"] for label in vocab["labels"]}, \
        json.loads(out.with_name("vocab.report.json").read_text())


def _assert_exact(counts: dict, report: dict, faults: dict, header: int = 0) -> None:
    expected = _expected(faults, header)
    assert report["malformed"]["examples"] == expected
    assert report["malformed"]["counts"] == {reason: len(lines) for reason, lines in expected.items()}
    assert counts == _good_counts(set(faults))


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "bz2"])
def test_yfcc_metadata_with_malformed_rows_bad_encodings_and_nul_bytes(tmp_path, compressed):
    data = b"".join(_damaged(_yfcc_lines(), YFCC_FAULTS))
    corpus = tmp_path / ("yfcc100m_dataset.bz2" if compressed else "yfcc100m_dataset")
    corpus.write_bytes(bz2.compress(data) if compressed else data)
    counts, report = _build_vocab("yfcc100m", corpus, "--stoplist", "none")
    _assert_exact(counts, report, YFCC_FAULTS)


TABLE_FAULTS = {
    3: (lambda line: b'{"key": "3", "tags": ["dog", ', "invalid JSON"),
    50: (lambda line: b'["not", "an", "object"]', "JSON line is not an object"),
    51: (lambda line: line.replace(b'"dog"', b'"d\xe9og"'), "invalid UTF-8"),  # Latin-1, not UTF-8
    120: (lambda line: line.replace(b'"120"', b'"12\x000"'), "NUL byte"),
    200: (lambda line: line.replace(b'["', b'[7, "'), "tags are not a list of strings or a delimited string"),
    201: (lambda line: line.replace(b'"key": "201"', b'"key": null'), "missing key"),
}
CSV_FAULTS = {
    3: (lambda line: b"3,dog;cat,extra,fields", "wrong number of fields"),
    51: (lambda line: line.replace(b"dog", b"d\xe9og"), "invalid UTF-8"),
    120: (lambda line: line.replace(b"120,", b"12\x000,"), "NUL byte"),
    201: (lambda line: line.replace(b"201,", b",", 1), "missing key"),
}


def test_jsonl_metadata_with_malformed_rows_bad_encodings_and_nul_bytes(tmp_path):
    lines = [json.dumps({"key": str(i), "tags": _tags(i)}).encode() for i in range(ROWS)]
    corpus = tmp_path / "photos.jsonl"
    corpus.write_bytes(b"\n".join(_damaged(lines, TABLE_FAULTS)) + b"\n")
    counts, report = _build_vocab("jsonl", corpus, "--stoplist", "none")
    _assert_exact(counts, report, TABLE_FAULTS)


def test_csv_metadata_with_malformed_rows_bad_encodings_and_nul_bytes(tmp_path):
    lines = [f"{i},{';'.join(_tags(i))}".encode() for i in range(ROWS)]
    corpus = tmp_path / "photos.csv"
    corpus.write_bytes(b"key,tags\n" + b"\n".join(_damaged(lines, CSV_FAULTS)) + b"\n")
    counts, report = _build_vocab("csv", corpus, "--stoplist", "none", "--tags-delimiter", ";")
    _assert_exact(counts, report, CSV_FAULTS, header=1)
