"""A command refuses to write over its own inputs: one error line, exit status 2, the input intact.

Each command is run the way a careless user would: ``build_vocab --out`` equal to ``--input``
(spelled the same, spelled another way, read through a symbolic link), an input named like the report
``build_vocab`` writes beside ``--out``, and ``build_shards --out`` equal to the folder of its
img2dataset input (whose tars are named like the shards it writes), given as a folder and as a
glob. Before the guard (data/overwrite_guard.py) each of these replaced the user's file.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from data.shards.tar_writer import write_tar
from tests.faults.child_process import REPO, run
from tests.shard_factory import img2dataset_members


def _script(name: str, *args: str, cwd: Path):
    return run([sys.executable, str(REPO / "scripts" / name), *args, "--no-progress", "--workers", "1"], cwd=cwd,
               env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=180)


def _corpus(path: Path) -> bytes:
    rows = [json.dumps({"key": f"k{i}", "tags": ["cat", "dog"]}) for i in range(5)]
    path.write_text("\n".join(rows) + "\n")
    return path.read_bytes()


@pytest.mark.parametrize("case", ["same", "spelled_otherwise", "symlink", "named_like_the_report"])
def test_build_vocab_never_writes_over_its_input(tmp_path, case):
    (tmp_path / "sub").mkdir()
    corpus = tmp_path / ("vocab.report.json" if case == "named_like_the_report" else "photos.jsonl")
    before = _corpus(corpus)
    out = {"same": "photos.jsonl", "spelled_otherwise": "sub/../photos.jsonl", "symlink": "photos.jsonl",
           "named_like_the_report": "vocab.json"}[case]
    if case == "symlink":
        (tmp_path / "link.jsonl").symlink_to(corpus)
    given = "link.jsonl" if case == "symlink" else corpus.name
    done = _script("build_vocab.py", "--source", "jsonl", "--input", given, "--out", out,
                   "--stoplist", "none", cwd=tmp_path)
    line = done.assert_one_error_line()
    assert "would destroy that input" in line and given in line, line
    assert corpus.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["sub", corpus.name] + (["link.jsonl"] if case == "symlink" else []))


@pytest.mark.parametrize("images", ["folder", "glob"])
def test_build_shards_never_writes_into_the_folder_of_its_inputs(tmp_path, images):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # img2dataset names its tars 00000.tar...; these are named like the shards the builder writes
    write_tar(corpus / "train-000000.tar", img2dataset_members(3, np.random.default_rng(0), tags=lambda i: ["cat"]))
    before = (corpus / "train-000000.tar").read_bytes()
    done = _script("build_vocab.py", "--source", "img2dataset", "--input", "corpus", "--out", "vocab.json",
                   "--stoplist", "none", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    source = "corpus" if images == "folder" else "corpus/*.tar"
    done = _script("build_shards.py", "--source", "img2dataset", "--input", source, "--images", source,
                   "--vocab", "vocab.json", "--out", "corpus", "--val-fraction", "0", cwd=tmp_path)
    line = done.assert_one_error_line()
    assert line.startswith("error: --out corpus holds --input") and "keep inputs outside it" in line, line
    assert sorted(p.name for p in corpus.iterdir()) == ["train-000000.tar"]
    assert (corpus / "train-000000.tar").read_bytes() == before


def test_build_shards_refuses_an_out_that_holds_the_vocabulary(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "vocab.json").write_text("{}")
    done = _script("build_shards.py", "--source", "jsonl", "--input", "photos.jsonl", "--vocab", "shards/vocab.json",
                   "--out", "shards", cwd=tmp_path)
    line = done.assert_one_error_line()
    assert "--out shards holds --vocab shards/vocab.json" in line, line


def test_an_output_that_is_a_link_to_an_input_is_replaced_not_followed(tmp_path):
    from data.atomic_write import write_text
    from data.overwrite_guard import refuse_overwriting_inputs

    corpus = tmp_path / "photos.jsonl"
    before = _corpus(corpus)
    (tmp_path / "out.json").symlink_to(corpus)
    refuse_overwriting_inputs({"--input": corpus}, {"--out": tmp_path / "out.json"})  # allowed: nothing is lost
    write_text(tmp_path / "out.json", "{}\n")
    assert corpus.read_bytes() == before and not (tmp_path / "out.json").is_symlink()
