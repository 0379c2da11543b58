"""The per-sample stages of a stream: raw tar samples -> labelled samples -> decoded samples.

Each stage is a generator over dicts carrying ``__key__`` (the sample key) and ``__url__`` (its
shard); a sample that cannot be used is counted under its reason and not yielded. Stages never
change their input dicts (the resampler may yield one dict several times).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import numpy as np

from data.images.decode import ImageSkip
from data.loader.skips import SkipCounter
from data.loader.transforms import Transform, header_box
from data.tar_member import IMAGE_SUFFIXES


def labelled_samples(samples: Iterable[dict[str, Any]], num_labels: int | None,
                     skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """``{"__key__", "__url__", "image": bytes, "labels": [int]}`` for each raw sample with an
    image and a json whose ``labels`` hold at least one id in ``0..num_labels-1``; ids outside that
    range are dropped and counted (:meth:`SkipCounter.drop_labels`)."""
    for raw in samples:
        image = next((raw[suffix] for suffix in IMAGE_SUFFIXES if suffix in raw), None)
        if image is None:
            skips.add("missing_image", _where(raw))
            continue
        if "json" not in raw:
            skips.add("missing_json", _where(raw))
            continue
        labels = parse_labels(raw["json"])
        if labels is None:
            skips.add("invalid_json", _where(raw), "expected a JSON object with a 'labels' list of integers")
            continue
        known = [label for label in labels if 0 <= label and (num_labels is None or label < num_labels)]
        if len(known) < len(labels):
            skips.drop_labels(len(labels) - len(known), _where(raw), _outside(labels, known, num_labels))
            labels = known
        if not labels:
            skips.add("no_label", _where(raw))
            continue
        yield {"__key__": raw["__key__"], "__url__": raw["__url__"], "image": image, "labels": labels}


def _outside(labels: list[int], known: list[int], num_labels: int | None) -> str:
    dropped = sorted(set(labels) - set(known))[:5]
    return f"ids {dropped}, valid {f'0..{num_labels - 1}' if num_labels is not None else '>= 0'}"


def _where(sample: dict[str, Any]) -> str:
    # Formatted only for a skipped sample: this is the per-sample hot path.
    return f"{sample['__key__']} in {sample['__url__']}"


def parse_labels(data: bytes) -> list[int] | None:
    """The distinct label ids of a sample's json, or None when it is not valid."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    labels = obj.get("labels") if isinstance(obj, dict) else None
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        return None
    return sorted(set(labels))


def decoded_samples(samples: Iterable[dict[str, Any]], transform: Transform, rng: np.random.Generator,
                    skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """Adds ``pixels`` (``3 x size x size`` uint8 tensor) to each sample whose image decodes."""
    for sample in samples:
        try:
            pixels = transform(sample["image"], rng)
        except ImageSkip as skip:
            skips.add(skip.reason, _where(sample), skip.detail)
            continue
        yield {"__key__": sample["__key__"], "labels": sample["labels"], "pixels": pixels}


def boxed_samples(samples: Iterable[dict[str, Any]], transform: Transform, rng: np.random.Generator,
                  skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """For device decoding: adds the crop ``box`` and ``flip`` chosen from the header, keeps the
    encoded bytes as ``jpeg``."""
    for sample in samples:
        try:
            box, flip = header_box(sample["image"], transform, rng)
        except ImageSkip as skip:
            skips.add(skip.reason, _where(sample), skip.detail)
            continue
        yield {"__key__": sample["__key__"], "labels": sample["labels"], "jpeg": sample["image"],
               "box": box, "flip": flip}
