"""Overlong rows and tags do not blow memory: a 50 MB line (a lost newline, a runaway tag list) in the
metadata is reported as malformed by its line number and skipped without ever being held whole,
and a half-megabyte tag is dropped by the canonicaliser; build_vocab completes with the other rows
counted exactly. The heavy variants add a bz2 corpus and 200 MB lines in YFCC100M, JSONL and CSV,
longer than the memory bound itself.

Peak RSS of the build_vocab process (and its workers), from wait4, is compared with the same
command on the same file without the long line: at most 96 MiB more, a few of the readers' blocks
(16 MiB for YFCC100M, 32 MiB for tables), whatever the line's length. Before the readers had a
line limit, one 50 MB YFCC line of short tags took 1.1 GB more, and a 50 MB JSONL line 650 MB.

The readers' limit itself is checked in process at every block boundary: random line lengths on
both sides of the limit, tiny blocks, plain and compressed input.
"""
from __future__ import annotations

import bz2
import gzip
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from data.corpus.lines import LONG_LINE
from data.corpus.table import TableReader
from data.corpus.yfcc import YfccReader, encode_tags, format_line
from tests.faults.child_process import REPO, run

MB = 1 << 20
ROWS = 400  # ordinary rows, around the long one
BOUND_MIB = 96


def _yfcc(path: Path, long_bytes: int = 0) -> Path:
    lines = [format_line({"photo_id": i, "user_tags": encode_tags(["dog", f"breed{i % 4}"])}) for i in range(ROWS)]
    lines[ROWS // 2] = format_line({"photo_id": 999_999, "user_tags": encode_tags(["cat", "x" * 500_000])})
    if long_bytes:  # millions of short tags
        lines.insert(ROWS // 2, format_line({"photo_id": 123, "user_tags": ",".join(["ab"] * (long_bytes // 3))}))
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return path


def _jsonl(path: Path, long_bytes: int = 0) -> Path:
    rows = [json.dumps({"key": str(i), "tags": ["dog", f"breed{i % 4}"]}) for i in range(ROWS)]
    rows[ROWS // 2] = json.dumps({"key": "999999", "tags": ["cat", "x" * 500_000]})
    if long_bytes:
        rows.insert(ROWS // 2, json.dumps({"key": "long", "tags": ["ab"] * (long_bytes // 6)}))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _csv(path: Path, long_bytes: int = 0) -> Path:
    rows = ["key,tags"] + [f"{i},dog;breed{i % 4}" for i in range(ROWS)]
    rows[ROWS // 2 + 1] = "999999,cat;" + "x" * 500_000
    if long_bytes:
        rows.insert(ROWS // 2 + 1, "long," + ";".join(["ab"] * (long_bytes // 3)))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _build_vocab(source: str, corpus: Path, out: Path, *extra: str):
    done = run([sys.executable, str(REPO / "scripts" / "build_vocab.py"), "--source", source, "--input", str(corpus),
                "--out", str(out), "--workers", "2", "--no-progress", *extra], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.with_name(f"{out.stem}.report.json").read_text()), done.peak_rss_mib


def _assert_long_line_skipped(tmp_path: Path, source: str, with_long: Path, without: Path, line: int,
                              *extra: str) -> None:
    report, peak = _build_vocab(source, with_long, tmp_path / "long" / "vocab.json", *extra)
    baseline_report, baseline = _build_vocab(source, without, tmp_path / "plain" / "vocab.json", *extra)
    reason = "line too long"
    assert report["malformed"]["counts"] == {reason: 1} and report["malformed"]["examples"] == {reason: [line]}
    assert baseline_report["malformed"]["counts"] == {}
    vocab = json.loads((tmp_path / "long" / "vocab.json").read_text())
    counts = {label["tag"]: label["count"] for label in vocab["labels"]}
    # Every other row counted exactly; the 500 kB tag dropped, its row's short tag kept.
    breeds = Counter(f"breed{i % 4}" for i in range(ROWS) if i != ROWS // 2)
    assert counts == {"dog": ROWS - 1, "cat": 1, **breeds}
    assert peak < baseline + BOUND_MIB, (peak, baseline)
    print(f"{source}: a {with_long.stat().st_size - without.stat().st_size:,}-byte line skipped at line "
          f"{line}; peak RSS {peak:.0f} MiB vs {baseline:.0f} MiB without it")


def test_a_50_mb_yfcc_line_is_skipped_by_line_number_without_blowing_memory(tmp_path):
    _assert_long_line_skipped(tmp_path, "yfcc100m", _yfcc(tmp_path / "long.tsv", 50 * MB),
                              _yfcc(tmp_path / "plain.tsv"), ROWS // 2 + 1)


@pytest.mark.heavy
def test_a_50_mb_line_in_a_bz2_yfcc_file_is_skipped_without_blowing_memory(tmp_path):
    with_long, without = tmp_path / "long.tsv.bz2", tmp_path / "plain.tsv.bz2"
    with_long.write_bytes(bz2.compress(_yfcc(tmp_path / "long.tsv", 50 * MB).read_bytes(), 1))
    without.write_bytes(bz2.compress(_yfcc(tmp_path / "plain.tsv").read_bytes(), 1))
    _assert_long_line_skipped(tmp_path, "yfcc100m", with_long, without, ROWS // 2 + 1)


@pytest.mark.heavy
@pytest.mark.parametrize("source", ["yfcc100m", "jsonl", "csv"])
def test_a_200_mb_line_costs_less_memory_than_its_own_length(tmp_path, source):
    write, name, line, extra = {"yfcc100m": (_yfcc, "t.tsv", ROWS // 2 + 1, ()),
                                "jsonl": (_jsonl, "t.jsonl", ROWS // 2 + 1, ()),
                                "csv": (_csv, "t.csv", ROWS // 2 + 2, ("--tags-delimiter", ";"))}[source]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _assert_long_line_skipped(tmp_path, source, write(tmp_path / "a" / name, 200 * MB), write(tmp_path / "b" / name),
                              line, *extra)


# -- the readers' line limit at every block boundary (in process, small blocks) ----------------------

def _random_lines(rng: random.Random, count: int, limit: int, line) -> list[bytes]:
    """``count`` lines ``line(i, tag)`` of random lengths (newline left out) around ``limit``: short,
    exactly at it, one byte over, and far over."""
    lines = []
    for i in range(count):
        target = rng.choice([5, limit // 2, limit - 1, limit, limit + 1, 2 * limit, 10 * limit])
        fixed = len(line(i, "")) - 1
        lines.append(line(i, "t" * max(1, target - fixed)))
    return lines


def _assert_exactly_the_long_lines_skipped(reader, lines: list[bytes], limit: int, reason: str) -> None:
    keys, malformed = [], []
    for chunk in reader.chunks():
        batch = reader.read_chunk(chunk, tags_only=True)
        keys += batch.keys.to_pylist()
        malformed += batch.malformed
    assert {len(line) - 1 for line in lines} >= {limit, limit + 1}  # both sides of the edge are there
    too_long = [i for i, line in enumerate(lines) if len(line) - 1 > limit]
    assert malformed == [(i + 1, reason) for i in too_long]
    assert keys == [str(i) for i in range(len(lines)) if i not in too_long]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("suffix", ["", ".bz2"])
def test_yfcc_reader_skips_exactly_the_lines_over_the_limit_wherever_blocks_fall(tmp_path, seed, suffix):
    rng, limit = random.Random(seed), 120
    lines = _random_lines(rng, 60, limit, lambda i, tag: format_line({"photo_id": i, "user_tags": tag}).encode())
    path = tmp_path / f"yfcc.tsv{suffix}"
    path.write_bytes(bz2.compress(b"".join(lines)) if suffix else b"".join(lines))
    reader = YfccReader(path, block_size=rng.choice([7, 64, 150]), max_line_bytes=limit)
    _assert_exactly_the_long_lines_skipped(reader, lines, limit, LONG_LINE)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_table_reader_skips_exactly_the_lines_over_the_limit_wherever_blocks_fall(tmp_path, seed, suffix):
    rng, limit = random.Random(seed), 120
    lines = _random_lines(rng, 60, limit, lambda i, tag: json.dumps({"key": str(i), "tags": [tag]}).encode() + b"\n")
    path = tmp_path / f"t.jsonl{suffix}"
    path.write_bytes(gzip.compress(b"".join(lines)) if suffix else b"".join(lines))
    reader = TableReader(path, block_bytes=rng.choice([7, 64, 100]), max_line_bytes=limit)
    _assert_exactly_the_long_lines_skipped(reader, lines, limit, LONG_LINE)
