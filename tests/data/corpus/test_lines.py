"""The block chunker and the malformed-line rules every text reader shares (data/corpus/lines.py),
checked against plain Python splits of the same bytes."""
from __future__ import annotations

import io
import random

import pytest

from data.corpus.lines import (BAD_UTF8, LONG_LINE, NUL_BYTE, LineBlock, damaged_lines, file_pieces, line_blocks,
                               line_ends, read_block)
from data.errors import UserError

LIMIT = 40


def random_text(seed: int, lines: int = 300) -> bytes:
    """Lines of random lengths on both sides of LIMIT (a few far over it), some empty; the last one
    without its newline."""
    rng = random.Random(seed)
    out = [b"x" * rng.choice([0, 1, 7, LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT, 20]) + b"\n" for _ in range(lines)]
    return b"".join(out) + b"no newline at the end"


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("piece_bytes", [3, 64, 1000, 1 << 20])
@pytest.mark.parametrize("keep_data", [False, True], ids=["ranges", "bytes"])
def test_blocks_tile_the_input_at_line_ends_with_their_first_line_number(seed, piece_bytes, keep_data):
    data = random_text(seed)
    pieces = [bytes(p) for p in file_pieces(io.BytesIO(data), piece_bytes)]  # each valid until the next
    assert b"".join(pieces) == data and all(len(p) == piece_bytes for p in pieces[:-1])
    blocks = list(line_blocks(pieces, LIMIT, keep_data=keep_data, where="t"))
    end = 0
    for block in blocks:
        text = data[block.offset:block.offset + block.length]
        assert block.offset == end and block.length > 0
        assert block.first_line == data[:block.offset].count(b"\n") + 1
        assert text.endswith(b"\n") or block.offset + block.length == len(data)
        if block.overlong:  # one line, over the limit, never carried
            assert text.count(b"\n") <= 1 and len(text.rstrip(b"\n")) > LIMIT and block.data is None
        else:
            assert block.data == (text if keep_data else None)
        end = block.offset + block.length
    assert end == len(data)


def test_a_line_over_the_limit_across_pieces_is_never_carried_whole():
    data = b"short\n" + b"y" * 10_000 + b"\nafter\n"
    blocks = list(line_blocks((data[i:i + 64] for i in range(0, len(data), 64)), 100, keep_data=True, where="t"))
    assert [(b.first_line, b.overlong) for b in blocks] == [(1, False), (2, True), (3, False)]
    assert [b.data for b in blocks] == [b"short\n", None, b"after\n"]


def test_damaged_lines_follow_the_rules_in_order_of_precedence():
    lines = [b"fine", b"x" * (LIMIT + 1), b"nul\x00here", b"bad \xff utf8", b"\xc3", b"both\x00\xff",
             b"long \x00" + b"z" * LIMIT, b"\xe7\x8c\xab ok", b""]
    data = b"\n".join(lines) + b"\n"
    expected = {}
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            expected[i] = BAD_UTF8
        if b"\x00" in line:
            expected[i] = NUL_BYTE
        if len(line) > LIMIT:
            expected[i] = LONG_LINE
    assert damaged_lines(data, len(data), line_ends(data, len(data)), LIMIT) == expected
    assert expected == {1: LONG_LINE, 2: NUL_BYTE, 3: BAD_UTF8, 4: BAD_UTF8, 5: NUL_BYTE, 6: LONG_LINE}


def test_read_block_ends_in_a_newline_and_notices_a_file_that_changed(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"one\ntwo")
    data, size = read_block(path, LineBlock(1, 0, 7))
    assert bytes(data[:size]) == b"one\ntwo\n"
    assert read_block(path, LineBlock(2, data=b"two")) == (b"two\n", 4)
    with pytest.raises(UserError, match="changed while it was being read"):
        read_block(path, LineBlock(1, 0, 70))


def test_a_read_error_names_the_input_and_the_line_reached():
    def pieces():
        yield b"a\nb\nc"
        raise EOFError("compressed data ended before the end-of-stream marker")
    with pytest.raises(UserError, match=r"in.gz: cannot read past line 3: compressed data ended"):
        list(line_blocks(pieces(), LIMIT, keep_data=True, where="in.gz"))
