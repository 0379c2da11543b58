"""The per-sample stages of a stream: raw tar samples -> labelled samples -> decoded samples.

Each stage is a generator over dicts carrying ``__key__`` (the sample key) and ``__url__`` (its
shard); a sample that cannot be used is counted under its reason and not yielded. Stages never
change their input dicts (the resampler may yield one dict several times).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from data.images.decode import ImageSkip
from data.loader.resampling import DRAWN_KEY
from data.loader.skips import SkipCounter
from data.loader.transforms import Transform, header_box
from data.tar_member import IMAGE_SUFFIXES
from data.untrusted_json import INVALID, InvalidJSON, parse_json

_LABELS_EXPECTED = "expected a JSON object with a 'labels' list of integers"


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
        try:
            labels = parse_labels(raw["json"])
        except InvalidJSON as err:
            skips.add("invalid_json", _where(raw), str(err))
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


def parse_labels(data: bytes) -> list[int]:
    """The distinct label ids of a sample's json; :class:`InvalidJSON` when it is not valid JSON
    (:func:`~data.untrusted_json.parse_json`) or holds no ``labels`` list of integers."""
    obj = parse_json(data)
    labels = obj.get("labels") if isinstance(obj, dict) else None
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise InvalidJSON(INVALID, _LABELS_EXPECTED)
    return sorted(set(labels))


def decoded_samples(samples: Iterable[dict[str, Any]], transform: Transform, rng: np.random.Generator,
                    skips: SkipCounter) -> Iterator[dict[str, Any]]:
    """Adds ``pixels`` (``3 x size x size`` uint8 tensor) to each sample whose image decodes; keeps
    the hashtag the resampler drew it for (``drawn_label``, -1 when not resampled)."""
    for sample in samples:
        try:
            pixels = transform(sample["image"], rng)
        except ImageSkip as skip:
            skips.add(skip.reason, _where(sample), skip.detail)
            continue
        yield {"__key__": sample["__key__"], "labels": sample["labels"], "pixels": pixels,
               DRAWN_KEY: sample.get(DRAWN_KEY, -1)}


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
               "box": box, "flip": flip, DRAWN_KEY: sample.get(DRAWN_KEY, -1)}
