"""The paper's label-noise protocol, applied to a written world's metadata (docs/synthetic.md).

Mahajan et al. (2018, section 3.2) injected noise by replacing a fraction p of each image's hashtags
with hashtags drawn from the marginal distribution over hashtags, on a fixed vocabulary. Here:

* the vocabulary is given (built once from the clean world and reused for every noise level), and
  an image's *hashtags* are its vocabulary labels, every one of them (visual or not), found the way
  the shard builder finds them (:meth:`Vocabulary.label_ids` on the decoded user tags);
* each label of an image is replaced with probability p (independently, so a fraction p of the
  labels in expectation) by a label drawn from the marginal (the vocabulary's counts), never one the
  image already carries; the raw tags that named the replaced label give way to the new label's
  canonical tag, written where the first of them stood;
* nothing else of a row changes: the other tags keep their raw bytes, the other 24 columns and the
  rows without a replacement stay byte-identical, and the pictures are the clean world's (build the
  shards with ``--images <clean world>``). Video rows are left alone (the shard builder skips them).

Each row's draws depend only on (seed, its line), so the result does not depend on how it is read.
The realised rate (replaced labels / all labels of the image rows) is written to ``noise.json``.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import numpy as np

from data.atomic_write import atomic_open, write_json
from data.corpus.yfcc import COLUMNS_25
from data.errors import UserError
from data.synthetic.world import METADATA_NAME
from data.vocab.vocabulary import Vocabulary

NOISE_JSON_NAME = "noise.json"
_TAGS = COLUMNS_25.index("user_tags")
_MARKER = COLUMNS_25.index("marker")
_NOISE_STREAM = 7  # the key of this module's random stream, apart from world.py's streams


@dataclass
class NoiseReport:
    """What :func:`noise_labels` wrote and what it changed."""

    metadata: str
    rate: float
    seed: int
    image_rows: int
    labels: int
    replaced: int
    rows_changed: int
    clean_metadata_sha256: str
    vocab_sha256: str
    num_labels: int
    seconds: float = 0.0

    @property
    def realised_rate(self) -> float:
        return self.replaced / self.labels if self.labels else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "realised_rate": self.realised_rate}


class _Noiser:
    def __init__(self, vocab: Vocabulary, rate: float, seed: int) -> None:
        self.vocab, self.rate, self.seed = vocab, rate, seed
        self.canonicalizer = vocab.canonicalizer()
        self.index = vocab.index()
        counts = np.array([label.count for label in vocab.labels], dtype=np.float64)
        self.cumulative = np.cumsum(counts / counts.sum())
        self.labels = self.replaced = self.rows_changed = self.image_rows = 0

    def _label_of(self, raw: str) -> int | None:
        canonical = self.canonicalizer(unquote_plus(raw))
        return None if canonical is None else self.index.get(canonical)

    def _draw(self, rng: np.random.Generator, taken: set[int]) -> int:
        while True:  # rejection: the marginal restricted to labels the image does not carry
            label = int(np.searchsorted(self.cumulative, rng.uniform(), side="right"))
            label = min(label, len(self.cumulative) - 1)
            if label not in taken:
                return label

    def row(self, line_number: int, line: str) -> str:
        columns = line.rstrip("\n").split("\t")
        if len(columns) != len(COLUMNS_25):
            raise UserError(f"metadata line {line_number + 1} has {len(columns)} columns, not the 25 of a "
                            "synthetic world's yfcc100m_dataset.tsv; pass the clean world's directory")
        if columns[_MARKER] == "1" or not columns[_TAGS]:
            self.image_rows += columns[_MARKER] != "1"
            return line
        self.image_rows += 1
        raw_tags = columns[_TAGS].split(",")
        owners = [self._label_of(raw) for raw in raw_tags]
        labels = list(dict.fromkeys(label for label in owners if label is not None))
        self.labels += len(labels)
        rng = np.random.default_rng([self.seed, _NOISE_STREAM, line_number])
        flips = rng.uniform(size=len(labels)) < self.rate
        if not flips.any() or len(labels) >= len(self.vocab):
            return line
        taken = set(labels)
        replacement: dict[int, int] = {}
        for label, flip in zip(labels, flips):
            if flip:
                replacement[label] = self._draw(rng, taken)
                taken.add(replacement[label])
        self.replaced += len(replacement)
        self.rows_changed += 1
        written: set[int] = set()
        tags = []
        for raw, owner in zip(raw_tags, owners):
            if owner not in replacement:
                tags.append(raw)
            elif owner not in written:  # the first tag naming a replaced label carries the new one
                written.add(owner)
                tags.append(quote_plus(self.vocab.labels[replacement[owner]].tag))
        columns[_TAGS] = ",".join(tags)
        return "\t".join(columns) + ("\n" if line.endswith("\n") else "")


def noise_labels(world: str | Path, vocab_path: str | Path, out: str | Path, rate: float,
                 seed: int = 0) -> NoiseReport:
    """Write ``out``/yfcc100m_dataset.tsv: ``world``'s metadata with a fraction ``rate`` of each
    image's labels (``vocab_path``'s) replaced by draws from the label marginal, and
    ``out``/noise.json with the realised rate. The images stay in ``world``."""
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"--hashtag-noise must be in [0, 1], got {rate}")
    clean = Path(world) / METADATA_NAME
    if not clean.is_file():
        raise UserError(f"{clean} not found: pass the directory of a world written by scripts/make_synthetic.py")
    out = Path(out)
    if out.resolve() == Path(world).resolve():
        raise UserError(f"--out {out} is the clean world itself; pass another directory (the clean rows are kept)")
    vocab = Vocabulary.load(vocab_path)
    started = time.perf_counter()
    noiser = _Noiser(vocab, rate, seed)
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with clean.open(encoding="utf-8", newline="") as source, atomic_open(out / METADATA_NAME, "w") as sink:
        for number, line in enumerate(source):
            digest.update(line.encode("utf-8"))
            sink.write(noiser.row(number, line))
    report = NoiseReport(str(out / METADATA_NAME), rate, seed, noiser.image_rows, noiser.labels, noiser.replaced,
                         noiser.rows_changed, digest.hexdigest(),
                         hashlib.sha256(Path(vocab_path).read_bytes()).hexdigest(), len(vocab),
                         round(time.perf_counter() - started, 2))
    write_json(out / NOISE_JSON_NAME, {**report.to_dict(), "clean_world": str(Path(world).resolve()),
                                       "vocab": str(Path(vocab_path).resolve()),
                                       "protocol": "each vocabulary label of an image replaced with probability "
                                                   "rate by a draw from the label marginal (the vocabulary's "
                                                   "counts) that the image does not carry"})
    return report

