"""Vocabulary building: selection, WordNet alignment, and scripts/build_vocab.py end to end."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data.corpus.yfcc import YfccReader, encode_tags, format_line
from data.errors import UserError
from data.vocab.build import build_vocabulary, select_labels
from data.vocab.tags import TagCanonicalizer
from data.vocab.vocabulary import Vocabulary

CANON = TagCanonicalizer.from_files()
WORDS = [f"word{i}" for i in range(60)]


def write_zipf_corpus(path: Path, rows: int = 1500, seed: int = 0) -> Counter:
    """A corpus whose tag i appears with probability ~ 1/(i+1); returns the true image counts."""
    rng = random.Random(seed)
    truth: Counter = Counter()
    lines = []
    for i in range(rows):
        tags = sorted({w for rank, w in enumerate(WORDS) if rng.random() < 0.6 / (rank + 1)})
        truth.update(tags)
        # A second spelling of a tag the image already has must not count twice.
        spelled = tags + [tags[0].upper()] if tags else tags
        lines.append(format_line({"photo_id": i, "user_tags": encode_tags(spelled)}))
    path.write_text("".join(lines))
    return truth


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Counter]:
    path = tmp_path_factory.mktemp("vocab") / "yfcc.tsv"
    return path, write_zipf_corpus(path)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[3] / "scripts" / "build_vocab.py"
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_select_labels_is_deterministic():
    counts = {"b": 5, "a": 5, "c": 9, "d": 1, "e": 5}
    assert select_labels(counts) == [("c", 9), ("a", 5), ("b", 5), ("e", 5), ("d", 1)]
    assert select_labels(counts, top_k=2, min_count=2) == [("c", 9), ("a", 5)]
    assert select_labels(dict(reversed(list(counts.items()))), top_k=3) == select_labels(counts, top_k=3)


def test_cli_end_to_end(corpus, tmp_path):
    path, truth = corpus
    out = tmp_path / "vocab.json"
    done = run_cli("--source", "yfcc100m", "--input", str(path), "--top-k", "20", "--min-count", "3",
                   "--out", str(out), "--workers", "2", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    vocab = Vocabulary.load(out)
    expected = sorted(((t, n) for t, n in truth.items() if n >= 3), key=lambda x: (-x[1], x[0]))[:20]
    assert [(label.tag, label.count) for label in vocab.labels] == expected
    assert [label.id for label in vocab.labels] == list(range(20))
    assert vocab.selection == {"top_k": 20, "min_count": 3, "align": None}
    assert vocab.corpus["source"] == "yfcc100m" and vocab.corpus["rows"] == 1500
    assert vocab.canonicalization == CANON.settings()
    report = json.loads((tmp_path / "vocab.report.json").read_text())
    labelled = sum(1 for line in path.read_text().splitlines()
                   if set(vocab.label_ids(t.replace("+", " ") for t in line.split("\t")[8].split(",") if t)))
    assert report["coverage"]["images_with_label"] == labelled and report["coverage"]["images"] == 1500
    assert report["top_labels"][0]["tag"] == expected[0][0]
    assert sum(report["labels_per_image"]["histogram"].values()) == 1500
    assert (tmp_path / "vocab.zipf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "vocab.report.json" in done.stdout and "vocab.zipf.png" in done.stdout


def test_min_count_alone(corpus):
    path, truth = corpus
    vocab, _ = build_vocabulary(YfccReader(path), CANON, min_count=50, workers=1, progress=False)
    assert {label.tag: label.count for label in vocab.labels} == {t: n for t, n in truth.items() if n >= 50}
    with pytest.raises(UserError, match="lower --min-count"):
        build_vocabulary(YfccReader(path), CANON, min_count=10**6, workers=1, progress=False)


def test_imagenet_alignment(tmp_path):
    path = tmp_path / "yfcc.tsv"
    rows = [["tench"], ["Tinca tinca"], ["tench", "tinca_tinca"], ["goldfish"], ["Great White Shark"],
            ["great_white_shark", "sunset"], ["sunset"], [], ["light", "plane"]]
    path.write_text("".join(format_line({"photo_id": i, "user_tags": encode_tags(tags)})
                            for i, tags in enumerate(rows)))
    vocab, report = build_vocabulary(YfccReader(path), CANON, align="imagenet-1k", workers=1, progress=False)
    by_synset = {label.synset: label for label in vocab.labels}
    assert set(by_synset) == {"n01440764", "n01443537", "n01484850"}
    tench = by_synset["n01440764"]
    assert (tench.tag, tench.count, tench.id) == ("tench", 3, 0) and "tincatinca" in tench.aliases
    assert by_synset["n01484850"].count == 2 and by_synset["n01443537"].count == 1
    assert vocab.index()["tincatinca"] == 0
    assert report.to_dict()["coverage"] == {"images": 9, "images_with_label": 6, "percent": pytest.approx(200 / 3)}
    alignment = report.to_dict()["alignment"]
    assert alignment["family"] == "imagenet-1k"
    # 'light' and 'plane' name IN-1k synsets (lighter, carpenter's plane) only in rare senses: no label,
    # and the report and the printed summary say where they went.
    assert alignment["lost_outside_family"]["light"] == "n03665366"
    assert alignment["lost_outside_family"]["plane"] == "n02691156"
    assert "hashtags of imagenet-1k synsets are not labels" in report.summary("r.json", "z.png", "v.json")


@pytest.mark.parametrize("args,message", [
    (["--source", "yfcc100m", "--input", "missing.tsv"], "error: YFCC100M input missing.tsv not found"),
    (["--source", "flickr", "--input", "x"], "error: unknown corpus source 'flickr'; use one of: yfcc100m, "),
    (["--source", "yfcc100m", "--input", "bad.tsv", "--layout", "23"],
     "error: empty corpus: bad.tsv has no usable rows (2 read: 2 wrong column count)"),
    (["--source", "yfcc100m", "--input", "zero.tsv"], "error: empty corpus: zero.tsv has no usable rows (0 read"),
    (["--source", "yfcc100m", "--input", "notags.tsv"], "error: empty corpus: notags.tsv: 2 images but no tag"),
    (["--source", "csv", "--input", "table.csv", "--tags-field", "hashtag"],
     "error: table.csv has no tags column 'hashtag'"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "bad.tsv").write_text(format_line({"photo_id": 1}).replace("\t", "", 3) * 2)
    (tmp_path / "zero.tsv").write_text("")
    (tmp_path / "notags.tsv").write_text(format_line({"photo_id": 1, "user_tags": "2012,canon"}) * 2)
    (tmp_path / "table.csv").write_text("key,hashtags\n1,a;b\n")
    done = run_cli(*args, "--out", "vocab.json", "--workers", "1", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "vocab.json").exists()


def test_real_flickr_table(shared_data, tmp_path):
    table = shared_data / "flickr_dresden_tags" / "flickr_dresden_cc-by-licenses.csv"
    done = run_cli("--source", "csv", "--input", str(table), "--key-field", "guid", "--tags-field", "hashtags",
                   "--tags-delimiter", ";", "--top-k", "100", "--out", "vocab.json", "--workers", "2",
                   "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    vocab = Vocabulary.load(tmp_path / "vocab.json")
    assert len(vocab) == 100 and vocab.labels[0].tag == "dresden"
    counts = [label.count for label in vocab.labels]
    assert counts == sorted(counts, reverse=True)
