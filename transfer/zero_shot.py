"""Zero-shot classification from hashtags: the pretrained hashtag classifier, unchanged, scores
classes named by WordNet ids through the synsets its vocabulary's labels carry (vocab.json from
``build_vocab.py --align imagenet-1k``).

A class's score is a reduction over the logits of the hashtag labels carrying its synset:

- ``max`` (default): the best-matching hashtag. With a synset-aligned vocabulary each synset is one
  label, so both reductions give that label's logit.
- ``logsumexp``: the log of the summed (unnormalised) probabilities of all its hashtags, i.e. the
  softmax over classes of these scores is the hashtag softmax's mass pooled per class; it favours
  classes with many synonymous hashtags.

A class with no hashtag label scores ``-inf`` (never predicted) and is reported; a hashtag whose
synset is no class is ignored (its probability mass is simply not assigned).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from data.errors import UserError
from data.vocab.vocabulary import Vocabulary

Reduce = Literal["max", "logsumexp"]


@dataclass(frozen=True)
class ClassMapping:
    """Per class, the vocabulary label ids carrying its synset."""

    classes: list[str]
    labels: list[list[int]]

    @property
    def unmapped(self) -> list[str]:
        return [name for name, ids in zip(self.classes, self.labels) if not ids]

    def to_dict(self) -> dict:
        return {"classes": len(self.classes), "mapped": len(self.classes) - len(self.unmapped),
                "unmapped": self.unmapped, "labels_used": sum(len(ids) for ids in self.labels)}


def class_mapping(vocab: Vocabulary, classes: Sequence[str], source: str = "vocab.json") -> ClassMapping:
    """Map each class (a wnid) to the labels whose ``synset`` is that wnid; UserError when the
    vocabulary carries no synsets or none of them is a class."""
    by_synset: dict[str, list[int]] = {}
    for label in vocab.labels:
        if label.synset:
            by_synset.setdefault(label.synset, []).append(label.id)
    if not by_synset:
        raise UserError(f"{source}: no label carries a WordNet synset; zero-shot needs a vocabulary built with "
                        "--align imagenet-1k (or another synset alignment)")
    mapping = ClassMapping(list(classes), [sorted(by_synset.get(name, [])) for name in classes])
    if len(mapping.unmapped) == len(mapping.classes):
        raise UserError(f"{source}: none of the {len(classes)} classes (e.g. {classes[0]!r}) is a synset of the "
                        "vocabulary; zero-shot needs class folders named by WordNet ids such as n01440764")
    return mapping


class SynsetHead(nn.Module):
    """``N x K`` hashtag logits -> ``N x C`` class scores (see the module doc)."""

    def __init__(self, mapping: ClassMapping, num_labels: int, reduce: Reduce = "max") -> None:
        super().__init__()
        width = max(1, max(len(ids) for ids in mapping.labels))
        # Padding points at an extra -inf column, so every class reduces over `width` entries.
        index = torch.full((len(mapping.labels), width), num_labels, dtype=torch.int64)
        for row, ids in enumerate(mapping.labels):
            index[row, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        self.register_buffer("index", index, persistent=False)
        self.num_labels = num_labels
        self.reduce = reduce

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != self.num_labels:
            raise ValueError(f"expected {self.num_labels} hashtag logits, got {logits.shape[1]}")
        padded = torch.cat([logits, logits.new_full((logits.shape[0], 1), float("-inf"))], dim=1)
        gathered = padded[:, self.index]  # N x C x width
        if self.reduce == "max":
            return gathered.amax(dim=2)
        return torch.logsumexp(gathered, dim=2)
