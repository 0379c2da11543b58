"""WordNet's sense order: parsing index.noun, the shipped table, and the script that writes it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import UserError
from data.vocab.synsets import family_synsets
from data.vocab.wordnet_senses import (SENSE_TABLE, ambiguous_lemmas, lemma_key, parse_index_noun,
                                       read_sense_table, write_sense_table)

ROOT = Path(__file__).resolve().parents[3]

# Four lines of WordNet 3.0's index.noun as published (the licence header starts with spaces).
INDEX_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
plane n 5 6 @ ~ %p + ; - 5 3 02691156 13861050 13941806 03955296 03954731  
light n 15 7 ! @ ~ #p = + ; 15 12 11473954 03665366 06210791 05018103 08646188 14563784 04951373 10276659 13983304 05807933 04953380 05612706 09184668 06874019 03666591  
crane n 5 4 @ ~ #m + 5 0 10914447 10914331 09295455 03126707 02012849  
great_white_shark n 1 2 @ #m 1 0 01484850  
"""


def test_index_noun_lines_are_parsed_in_sense_order(tmp_path: Path):
    (tmp_path / "index.noun").write_text(INDEX_NOUN)
    index = parse_index_noun(tmp_path / "index.noun")
    assert index["plane"] == (3, ["n02691156", "n13861050", "n13941806", "n03955296", "n03954731"])
    assert index["light"][0] == 12 and index["light"][1][1] == "n03665366" and len(index["light"][1]) == 15
    assert index["crane"] == (0, ["n10914447", "n10914331", "n09295455", "n03126707", "n02012849"])
    assert lemma_key("Great White  Shark") in index


def test_a_line_that_is_not_index_noun_names_the_file_and_line(tmp_path: Path):
    (tmp_path / "index.noun").write_text(INDEX_NOUN + "plane v 1 0 1 0 01234567\n")
    with pytest.raises(UserError, match=r"index.noun:7: not an index.noun line"):
        parse_index_noun(tmp_path / "index.noun")


def test_written_table_reads_back_with_frequency_ranks(tmp_path: Path):
    (tmp_path / "index.noun").write_text(INDEX_NOUN)
    synsets = ["n02691156", "n03954731", "n03955296", "n03665366", "n03666591", "n01484850"]
    lemmas = {"n02691156": ["airplane", "plane"], "n03954731": ["plane", "carpenter's plane"],
              "n03955296": ["plane", "planer"], "n03665366": ["light", "light source"],
              "n03666591": ["lighter", "light"], "n01484850": ["great white shark"]}
    assert ambiguous_lemmas(synsets, lemmas) == {"plane", "light"}
    assert write_sense_table(tmp_path / "index.noun", tmp_path / "senses.txt", synsets, lemmas) == 2
    table = read_sense_table(tmp_path / "senses.txt")
    assert table["plane"].sense == {"n02691156": 1, "n03955296": 4, "n03954731": 5}
    assert table["plane"].frequency_rank("n02691156") == 0
    assert table["plane"].frequency_rank("n03954731") is None          # sense 5 of 3 ordered
    assert table["light"].frequency_rank("n03665366") == 1
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in (tmp_path / "senses.txt").read_text()


def test_shipped_table_covers_the_imagenet_synsets_consistently():
    table = read_sense_table()
    universe = set(family_synsets("imagenet-21k"))
    assert len(table) > 2_000
    for lemma, senses in table.items():
        assert set(senses.sense) <= universe, lemma
        assert len(set(senses.sense.values())) == len(senses.sense), lemma   # one sense number each
    assert table["plane"].sense["n02691156"] == 1 and table["light"].sense["n03666591"] == 15
    assert "Princeton University" in SENSE_TABLE.read_text()


def test_unreadable_table_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match="cannot read the WordNet sense table"):
        read_sense_table(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("plane\tthree\tn02691156:1\n")
    with pytest.raises(UserError, match=r"bad.txt:1: expected"):
        read_sense_table(tmp_path / "bad.txt")


def test_script_writes_the_table_and_refuses_to_overwrite_its_input(tmp_path: Path):
    (tmp_path / "index.noun").write_text(INDEX_NOUN)
    script = str(ROOT / "scripts" / "wordnet_senses.py")
    run = subprocess.run([sys.executable, script, "--index-noun", str(tmp_path / "index.noun"),
                          "--out", str(tmp_path / "senses.txt")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    # From the real timm tables, the four lines above give the ambiguous lemmas plane, light and crane.
    assert set(read_sense_table(tmp_path / "senses.txt")) == {"plane", "light", "crane"}
    run = subprocess.run([sys.executable, script, "--index-noun", str(tmp_path / "index.noun"),
                          "--out", str(tmp_path / "index.noun")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1
    assert (tmp_path / "index.noun").read_text() == INDEX_NOUN
