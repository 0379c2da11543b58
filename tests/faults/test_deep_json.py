"""JSON nested absurdly deep: a counted, reported skip wherever untrusted JSON is read, never a crash.

``json.loads`` raises ``RecursionError`` (not a ``ValueError``) on a document a few thousand levels
deep, and pyarrow's JSON reader crashes the process (segmentation fault) at 100,000 levels. Each
reader is given real files holding such a document beside good ones: a training shard (the
loader), a JSONL corpus (``build_vocab``), an img2dataset tar (``build_vocab``, then
``build_shards``, whose image index reads the same sample JSON). Every good record survives; the
deep one is counted under its reason (docs/reliability.md, "Hostile input").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from data.loader.pipeline import LoaderConfig, create_loader
from data.shards.tar_writer import write_tar
from data.untrusted_json import MAX_DEPTH, TOO_DEEP
from tests.faults.child_process import REPO
from tests.shard_factory import Sample, img2dataset_members, write_shard_dir

CRASHING_DEPTH = 100_000  # pyarrow's reader segfaults here; json.loads raises RecursionError


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args, "--no-progress"], cwd=cwd,
                          capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_loader_skips_a_sample_whose_json_nests_too_deep(tmp_path):
    deep = json.dumps({"labels": [1], "tags": ["t1"]})[:-1] + f', "extra": {_nested(CRASHING_DEPTH)}}}'
    just_over = json.dumps({"labels": [1], "extra": json.loads(_nested(MAX_DEPTH))})
    samples = [Sample("good0", [0]), Sample("deep", [1], json_bytes=deep.encode()),
               Sample("over", [1], json_bytes=just_over.encode()), Sample("good1", [1])]
    shards = write_shard_dir(tmp_path / "shards", [samples], num_labels=2, split="val")
    loader = create_loader(shards, LoaderConfig(batch_size=4, num_workers=0, image_size=16), mode="eval")
    keys = sorted(key for batch in loader for key in batch["keys"])
    assert keys == ["good0", "good1"]
    assert loader.skip_counts() == {"invalid_json": 2}


def test_build_vocab_counts_a_jsonl_line_nested_too_deep_as_malformed(tmp_path):
    rows = [json.dumps({"key": f"k{i}", "tags": ["cat", "dog"]}) for i in range(6)]
    rows[2] = f'{{"key": "deep", "tags": ["cat"], "extra": {_nested(CRASHING_DEPTH)}}}'
    rows[4] = f'{{"key": "over", "tags": ["cat"], "extra": {_nested(MAX_DEPTH)}}}'
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(rows) + "\n")
    done = _script("build_vocab.py", "--source", "jsonl", "--input", str(corpus), "--out", "vocab.json",
                   "--stoplist", "none", "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "vocab.report.json").read_text())
    assert report["malformed"]["counts"] == {TOO_DEEP: 2}
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert {label["tag"]: label["count"] for label in vocab["labels"]} == {"cat": 4, "dog": 4}


def test_img2dataset_json_nested_too_deep_is_malformed_for_the_vocabulary_and_the_shard_builder(tmp_path):
    corpus = tmp_path / "img2dataset"
    corpus.mkdir()
    members = img2dataset_members(4, np.random.default_rng(0), tags=lambda i: ["cat", "dog"])
    deep = {"key": "000000001", "url": "http://x/1.jpg", "tags": ["cat"]}
    members[3] = ("000000001.json", (json.dumps(deep)[:-1] + f', "exif": {_nested(CRASHING_DEPTH)}}}').encode())
    write_tar(corpus / "00000.tar", members)
    done = _script("build_vocab.py", "--source", "img2dataset", "--input", str(corpus), "--out", "vocab.json",
                   "--stoplist", "none", "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "vocab.report.json").read_text())
    assert report["malformed"]["counts"] == {f"{TOO_DEEP} (00000.tar)": 1}
    done = _script("build_shards.py", "--source", "img2dataset", "--input", str(corpus), "--images", str(corpus),
                   "--vocab", "vocab.json", "--out", "shards", "--val-fraction", "0", "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "shards" / "info.json").read_text())
    assert info["num_samples"]["total"] == 3
