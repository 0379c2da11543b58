"""The paper's label-noise protocol on a written world (data/synthetic/noise.py, make_synthetic.py
--noisy-copy-of): a fraction p of each image's labels replaced by draws from the label marginal, on a
fixed vocabulary, and nothing else of the world changed. Labels are read back the way the shard
builder reads them: the corpus reader's decoded tags through the vocabulary."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from data.corpus import open_corpus
from data.synthetic.write import make_world
from data.vocab.vocabulary import Vocabulary

REPO = Path(__file__).resolve().parents[3]
RATE = 0.3
IMAGES = 2000


def run_script(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *options], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """A clean 2,000-photo world, its vocabulary, and its noisy copy at 30 %."""
    root = tmp_path_factory.mktemp("noise")
    clean = make_world(root / "clean", images=IMAGES, size_range=(32, 40), seed=5, downstream_train_per_class=1,
                       downstream_val_per_class=1, workers=0, progress=False)
    vocab = root / "vocab.json"
    built = run_script("scripts/build_vocab.py", "--source", "yfcc100m", "--input", str(clean.metadata),
                       "--min-count", "3", "--out", str(vocab), "--workers", "1")
    assert built.returncode == 0, built.stderr
    noisy = root / "noisy"
    made = run_script("scripts/make_synthetic.py", "--out", str(noisy), "--noisy-copy-of", str(clean.root),
                      "--vocab", str(vocab), "--hashtag-noise", str(RATE), "--seed", "1")
    assert made.returncode == 0, made.stderr
    return clean.root, vocab, noisy


def labels_per_row(metadata: Path, vocab: Vocabulary) -> dict[str, list[int]]:
    """Key -> label ids of every image row, read by the corpus reader (videos skipped by it)."""
    return {record.key: vocab.label_ids(record.tags) for record in open_corpus("yfcc100m", metadata).records()}


def test_a_fraction_p_of_all_labels_is_replaced_within_binomial_tolerance(worlds):
    """Each label is replaced independently with probability p, so the replaced count over n labels is
    Binomial(n, p): the realised rate must lie within 4 standard deviations sqrt(p(1-p)/n) of p
    (false alarm < 1e-4), and noise.json must report that realised rate."""
    clean, vocab_path, noisy = worlds
    vocab = Vocabulary.load(vocab_path)
    before = labels_per_row(clean / "yfcc100m_dataset.tsv", vocab)
    after = labels_per_row(noisy / "yfcc100m_dataset.tsv", vocab)
    assert before.keys() == after.keys()
    total = sum(len(labels) for labels in before.values())
    replaced = sum(len(set(before[key]) - set(after[key])) for key in before)
    assert total > 3000
    rate = replaced / total
    assert abs(rate - RATE) < 4 * math.sqrt(RATE * (1 - RATE) / total), (rate, total)
    for key in before:  # a replaced label gives way to exactly one label the image did not carry
        assert len(after[key]) == len(before[key])
    report = json.loads((noisy / "noise.json").read_text())
    assert report["labels"] == total and report["replaced"] == replaced
    assert report["realised_rate"] == pytest.approx(rate)
    # The non-visual tags (summer, london, ...) are noised too: the noise is over all labels.
    described = json.loads((clean / "world.json").read_text())
    non_visual = set(vocab.label_ids(described["non_visual_tags"]))
    lost = [label for key in before for label in set(before[key]) - set(after[key])]
    assert sum(label in non_visual for label in lost) > 0.1 * len(lost)


def test_replacements_follow_the_label_marginal(worlds):
    """The labels drawn in follow the vocabulary's counts: over the replacements, the most frequent
    label is drawn in far more often than the median one (a uniform draw would not do that)."""
    clean, vocab_path, noisy = worlds
    vocab = Vocabulary.load(vocab_path)
    before = labels_per_row(clean / "yfcc100m_dataset.tsv", vocab)
    after = labels_per_row(noisy / "yfcc100m_dataset.tsv", vocab)
    drawn = [label for key in before for label in set(after[key]) - set(before[key])]
    counts = [label.count for label in vocab.labels]
    head = 0  # ids are ordered by descending count
    median = len(counts) // 2
    expected_ratio = counts[head] / counts[median]
    ratio = (drawn.count(head) + 1) / (drawn.count(median) + 1)
    assert expected_ratio > 5 and ratio > expected_ratio / 3, (ratio, expected_ratio)


def test_nothing_else_of_the_world_changes(worlds):
    """Every column but user_tags is byte-identical, rows without a replacement are identical, and in
    a changed row every tag not naming a replaced label keeps its raw bytes."""
    clean, vocab_path, noisy = worlds
    vocab = Vocabulary.load(vocab_path)
    old = (clean / "yfcc100m_dataset.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    new = (noisy / "yfcc100m_dataset.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(old) == len(new)
    tags_column = 10
    changed = 0
    for a, b in zip(old, new):
        ca, cb = a.rstrip("\n").split("\t"), b.rstrip("\n").split("\t")
        assert a.endswith("\n") == b.endswith("\n")
        assert ca[:tags_column] + ca[tags_column + 1:] == cb[:tags_column] + cb[tags_column + 1:]
        if a != b:
            changed += 1
            new_raw = cb[tags_column].split(",")
            after = set(vocab.label_ids([unquote_plus(raw) for raw in new_raw]))
            for raw in ca[tags_column].split(","):
                labels = vocab.label_ids([unquote_plus(raw)])
                if not labels or labels[0] in after:  # not a label, or a label that stayed
                    assert raw in new_raw, (raw, new_raw)
    assert 0 < changed < len(old)
    # The pictures are the clean world's: the noisy copy holds metadata and noise.json only.
    assert sorted(p.name for p in noisy.iterdir()) == ["noise.json", "yfcc100m_dataset.tsv"]


def test_noise_options_go_together_in_one_error_line(tmp_path, worlds):
    clean, _, _ = worlds
    result = run_script("scripts/make_synthetic.py", "--out", str(tmp_path / "x"), "--noisy-copy-of", str(clean),
                        "--hashtag-noise", "0.2")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: --noisy-copy-of, --vocab and --hashtag-noise go together: pass all three")
