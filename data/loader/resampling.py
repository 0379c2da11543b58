"""Hashtag-frequency resampling: the target label distribution and the stream stage that realises it.

Hashtag counts are Zipfian, so training on the stored image stream mostly shows the head labels.
The paper resamples towards a flatter target p_h ∝ n_h^q over labels (q=1 natural, q=½ square
root, the default, q=0 uniform). Drawing a hashtag h from p and then an image uniformly among the
n_h images carrying it gives each image the probability

    P(I) ∝ Σ_{h∈I} p_h / n_h ∝ Σ_{h∈I} n_h^(q−1) = w(I)

and the mean of w over the N images follows from the label counts alone:
Σ_I Σ_{h∈I} n_h^(q−1) = Σ_h n_h · n_h^(q−1) = Σ_h n_h^q, so mean_w = Σ_h n_h^q / N.

:class:`LabelResampler` realises P(I) on a stream in which every image appears equally often (the
loader's resampled shards): each image is emitted ``r = w(I)/mean_w`` times in expectation, as
⌊r⌋ copies plus one more with probability r − ⌊r⌋. Without a cap the expected number of emitted
samples per input is exactly 1. An optional cap bounds r (and so the copies of one image, at most
⌈cap⌉), which lowers the emission rate and under-represents the rarest labels; docs/sampling.md
derives both effects and reports measured distances to the target.

A mixture of shard sets (data/shards/directory.py) streams set i's images in the proportion π_i =
weight_i / Σ weight. Resampling then takes the label weights n_h^(q−1) from the union's counts
(n_h = Σ_i n_{h,i}) and divides each image's weight by the mean weight *of its own set*,
mean_w_i = Σ_h n_{h,i} n_h^(q−1) / N_i (:func:`set_mean_weights`): every set keeps emitting one
sample per input, so the mixing weights are the set proportions of what training sees, with
resampling on or off, and within each set images are drawn ∝ w(I). The image distribution is then
P(I) = π_i w(I) / Z_i for I in set i, Z_i = N_i mean_w_i; with π_i ∝ Z_i
(:func:`union_target_weights`) it is w(I) / Σ_h n_h^q, exactly the single-corpus resampling of
the union towards p_h ∝ n_h^q. :func:`mixture_label_distribution` gives the label shares any
other weights aim at.

Each emitted copy also names the hashtag it was drawn for (``sample["drawn_label"]``): among the
image's labels, h with probability n_h^(q−1)/w(I), the conditional of the hashtag-then-image draw
given the image, so over the stream the drawn hashtags follow p_h ∝ n_h^q (uncapped; for a mixture,
exactly :func:`mixture_label_distribution`, multi-label images included) while all labels of the
emitted images do not (an image carries its other labels along). This is what the sampler
controls; the loader counts it per label (``Loader.drawn_label_counts``). The attribution uses its
own random stream, so the emitted copies are the same with or without it.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from data.errors import UserError
from data.skip_report import SkipReport

Labels = Sequence[int]
#: the sample field naming the hashtag an emitted copy was drawn for
DRAWN_KEY = "drawn_label"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_q(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)) or not 0 <= q <= 1:
        raise UserError(f"sampling.q must be a number in [0, 1] (1 natural, 0.5 square root, 0 uniform), "
                        f"got {q!r}")
    return float(q)


def _check_counts(label_counts: Sequence[int]) -> np.ndarray:
    try:
        counts = np.asarray(label_counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("label_counts must be a list of per-label image counts (info.json "
                        "'label_counts')") from None
    if counts.ndim != 1 or counts.size == 0:
        raise UserError(f"label_counts must be a non-empty list of per-label image counts (info.json "
                        f"'label_counts'), got shape {counts.shape}")
    whole = np.isfinite(counts) & (counts == np.round(counts)) & (counts >= 0)
    if not whole.all():
        label = int(np.argmin(whole))
        raise UserError(f"label_counts[{label}] = {label_counts[label]!r} is not a number of images "
                        "(a whole number >= 0)")
    if not np.any(counts > 0):
        raise UserError("label_counts are all zero: no label is carried by any image, nothing to sample")
    return counts.astype(np.int64)


def label_distribution(label_counts: Sequence[int], q: float) -> np.ndarray:
    """Target p_h ∝ n_h^q over the labels with n_h > 0; labels no image carries get probability 0."""
    counts, q = _check_counts(label_counts), _check_q(q)
    mass = np.zeros(counts.size)
    used = counts > 0
    mass[used] = counts[used].astype(np.float64) ** q
    return mass / mass.sum()


def label_weights(label_counts: Sequence[int], q: float) -> np.ndarray:
    """n_h^(q−1) per label: each label's contribution to the weight of an image carrying it.

    Labels with n_h = 0 get NaN: according to the counts no image carries them, so an image that does
    means the counts describe other data (:func:`image_weights` and the stream reject it).
    """
    counts, q = _check_counts(label_counts), _check_q(q)
    weights = np.full(counts.size, np.nan)
    used = counts > 0
    weights[used] = counts[used].astype(np.float64) ** (q - 1.0)
    return weights


def _flatten(labels_per_image: Iterable[Labels]) -> tuple[np.ndarray, np.ndarray, int]:
    """All label ids in one array, the index of each one's image, and the number of images."""
    ids: list[int] = []
    owners: list[int] = []
    images = 0
    for labels in labels_per_image:
        ids.extend(labels)
        owners.extend([images] * len(labels))
        images += 1
    return np.asarray(ids, dtype=np.int64), np.asarray(owners, dtype=np.int64), images


def _label_error(label: Any, weights: np.ndarray, where: str) -> UserError:
    """The one-line error for a label id the counts cannot weigh (out of range or never counted)."""
    if _is_int(label) and 0 <= label < weights.size:
        return UserError(f"{where} carries label {label}, which label_counts say no image carries (count 0): "
                         "use the label_counts of the same shard set (info.json 'label_counts')")
    return UserError(f"{where} carries label {label!r}, not a label id in [0, {weights.size}): the shards "
                     "and label_counts come from different vocabularies; use the info.json of these shards")


def _weights_per_image(labels_per_image: Iterable[Labels], weights: np.ndarray) -> np.ndarray:
    ids, owners, images = _flatten(labels_per_image)
    bad = (ids < 0) | (ids >= weights.size)
    if not bad.any():
        bad = np.isnan(weights[ids])
    if bad.any():
        first = int(np.argmax(bad))
        raise _label_error(int(ids[first]), weights, f"image {int(owners[first])}")
    return np.bincount(owners, weights=weights[ids], minlength=images)


def image_weights(labels_per_image: Iterable[Labels], label_counts: Sequence[int], q: float) -> np.ndarray:
    """w(I) = Σ_{h∈I} n_h^(q−1) per image, unnormalised; 0 for an image with no label.

    Each image's labels are taken to be distinct (as the shards store them).
    """
    return _weights_per_image(labels_per_image, label_weights(label_counts, q))


def mean_image_weight(label_counts: Sequence[int], q: float, num_images: int | None = None) -> float:
    """mean_w over the corpus from the label counts alone: Σ_h n_h^q / N (see the module docstring)."""
    counts = _check_counts(label_counts)
    images = _check_num_images(num_images, counts)
    return float(np.sum(counts[counts > 0].astype(np.float64) ** _check_q(q))) / images


def _check_num_images(num_images: int | None, counts: np.ndarray) -> int:
    if num_images is None:
        return int(counts.sum())
    if not _is_int(num_images) or num_images < counts.max():
        raise UserError(f"num_images must be the number of images the label counts were taken over "
                        f"(info.json num_samples.train), at least the largest label count {counts.max()}; "
                        f"got {num_images!r}")
    return int(num_images)


def set_mean_weights(set_counts: Sequence[Sequence[int]], set_images: Sequence[int], q: float) -> np.ndarray:
    """Per shard set i of a mixture, mean_w_i = Σ_h n_{h,i} n_h^(q−1) / N_i: the mean image weight
    over its N_i images, with the label weights of the union's counts n_h = Σ_i n_{h,i}."""
    return _set_masses(set_counts, q) / _set_images(set_counts, set_images)


def union_target_weights(set_counts: Sequence[Sequence[int]], set_images: Sequence[int],
                         q: float | None) -> np.ndarray:
    """The mixing weights (summing to 1) under which a mixture streams exactly what one corpus made
    of the union would: Z_i = Σ_h n_{h,i} n_h^(q−1) normalised with resampling (q), N_i without."""
    mass = _set_images(set_counts, set_images).astype(np.float64) if q is None else _set_masses(set_counts, q)
    return mass / mass.sum()


def mixture_label_distribution(set_counts: Sequence[Sequence[int]], weights: Sequence[float],
                               q: float) -> np.ndarray:
    """The label shares a mixture with ``weights`` aims at: Σ_i π_i n_{h,i} n_h^(q−1) / Z_i, exact
    for images with one label (as :func:`label_distribution` is for one corpus); q=1 for a stream
    without resampling. With the weights of :func:`union_target_weights` it is p_h ∝ n_h^q."""
    per_set = _set_label_masses(set_counts, q)
    shares = _check_mix(weights, len(per_set))
    return (shares[:, None] * per_set / per_set.sum(axis=1, keepdims=True)).sum(axis=0)


def _set_label_masses(set_counts: Sequence[Sequence[int]], q: float) -> np.ndarray:
    """n_{h,i} n_h^(q−1) per set i and label h, with the union's n_h (NaN-free: a label no set
    carries has n_{h,i} = 0)."""
    counts = np.stack([_check_counts(c) for c in set_counts]).astype(np.float64)
    return counts * np.nan_to_num(label_weights(counts.sum(axis=0), q))


def _set_masses(set_counts: Sequence[Sequence[int]], q: float) -> np.ndarray:
    """Z_i = Σ_h n_{h,i} n_h^(q−1) per set."""
    return _set_label_masses(set_counts, q).sum(axis=1)


def _set_images(set_counts: Sequence[Sequence[int]], set_images: Sequence[int]) -> np.ndarray:
    if len(set_images) != len(set_counts):
        raise ValueError(f"{len(set_counts)} sets of label counts but {len(set_images)} image counts")
    return np.array([_check_num_images(n, _check_counts(c)) for c, n in zip(set_counts, set_images)],
                    dtype=np.float64)


def _check_mix(weights: Sequence[float], sets: int) -> np.ndarray:
    shares = np.asarray(weights, dtype=np.float64)
    if shares.shape != (sets,) or not np.all(np.isfinite(shares) & (shares > 0)):
        raise ValueError(f"need one positive finite weight per set ({sets}), got {list(weights)!r}")
    return shares / shares.sum()


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    """½ Σ |p_i − q_i| between two distributions given as (unnormalised) non-negative masses."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def _seed_int(seed: int | Sequence[int]) -> int:
    """A 128-bit seed for ``random.Random``, well mixed from an int or a tuple such as
    (seed, rank, worker, epoch), so nearby tuples give unrelated streams."""
    entropy = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not entropy or any(not _is_int(s) or s < 0 for s in entropy):
        raise UserError(f"sampling seed must be a non-negative int or a tuple of them, got {seed!r}")
    words = np.random.SeedSequence([int(s) for s in entropy]).generate_state(4, dtype=np.uint32)
    return int.from_bytes(words.astype("<u4").tobytes(), "little")


class LabelResampler:
    """Stream stage that re-weights images towards the label distribution p_h ∝ n_h^q.

    ``label_counts`` are the images per label over the data being streamed (info.json
    ``label_counts``) and ``num_images`` the number of images N they were counted over (info.json
    ``num_samples.train``). ``num_images`` defaults to Σ n_h, which is N only when every image
    carries exactly one label; pass it for multi-label data, otherwise the emission rate is off by
    the mean number of labels per image.

    Every input sample is emitted ⌊r⌋ times plus once more with probability r − ⌊r⌋, where
    r = min(w(I)/mean_w, cap) (:func:`image_weights`, :func:`mean_image_weight`). The first copy is
    the input dict itself, extra copies are shallow copies (the image bytes are shared); each copy
    carries the hashtag it was drawn for under ``drawn_label`` (the module docstring). Images with
    no label carry no hashtag, so the hashtag-then-image draw never picks them: their rate is 0;
    they are counted in ``skipped`` under ``no_label``. A label id outside the counts, or one the
    counts give 0 images, is an error: the counts then describe other data.

    With q=1 and one label per image (or the same number of labels on every image) the rate is
    exactly 1 and the stage is the identity. Copies leave adjacent: put a shuffle buffer after this
    stage, much larger than the largest rate, so that replicas spread over different batches.

    For a mixture of shard sets, ``label_counts`` and ``num_images`` are the union's and
    ``set_means`` maps each sample's ``set_key`` (its shard URL) to its set's mean weight
    (:func:`set_mean_weights`), which then replaces mean_w: each set's emission rate stays 1.
    """

    def __init__(self, label_counts: Sequence[int], q: float = 0.5, cap: float | None = None,
                 seed: int | Sequence[int] = 0, labels_key: str = "labels", num_images: int | None = None,
                 set_means: Mapping[str, float] | None = None, set_key: str = "__url__"):
        counts = _check_counts(label_counts)
        self.q = _check_q(q)
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float, np.number))
                                or not 1 <= cap < math.inf):
            raise UserError(f"sampling.cap must be a finite number >= 1 (the most copies expected of one "
                            f"image) or null for no cap, got {cap!r}")
        self.cap = None if cap is None else float(cap)
        self.labels_key = labels_key
        self.label_counts = counts
        self.num_images = _check_num_images(num_images, counts)
        self.weights = label_weights(counts, self.q)
        self.mean_weight = mean_image_weight(counts, self.q, self.num_images)
        self.set_means = None if set_means is None else dict(set_means)
        self.set_key = set_key
        # Plain Python containers: a dict lookup rejects negative ids that list indexing would wrap,
        # and per-sample float arithmetic on them is several times cheaper than on numpy scalars.
        self._weight_of = {label: float(self.weights[label]) for label in np.flatnonzero(counts > 0).tolist()}
        self.skipped = SkipReport()
        self.reseed(seed)

    def reseed(self, seed: int | Sequence[int]) -> None:
        """Restart the random stream; the loader passes e.g. (seed, rank, worker, epoch)."""
        # Re-seed in place: a running stream (persistent workers) holds this generator's methods.
        if not hasattr(self, "_rng"):
            self._rng, self._drawn_rng = random.Random(), random.Random()
        self._rng.seed(_seed_int(seed))
        self._drawn_rng.seed(_seed_int(seed) ^ 0x5EED)  # another stream: emission does not depend on it

    def _weight(self, labels: Labels, where: str) -> float:
        total = 0.0
        for label in labels:
            try:
                total += self._weight_of[label]
            except (KeyError, TypeError):
                raise _label_error(label, self.weights, where) from None
        return total

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        """The stream stage: yields each sample ⌊r⌋ times plus once more with probability r − ⌊r⌋."""
        key = self.labels_key
        weight_of = self._weight_of
        mean_weight = self.mean_weight
        set_means, set_key = self.set_means, self.set_key
        cap = math.inf if self.cap is None else self.cap
        random_ = self._rng.random
        drawn_random = self._drawn_rng.random
        for sample in samples:
            try:
                labels = sample[key]
            except (KeyError, TypeError):
                raise UserError(f"sample {self._name(sample)} has no {key!r} field: parse the labels "
                                "before the resampler, or pass the field's name as labels_key") from None
            try:
                size = len(labels)
            except TypeError:
                raise UserError(f"sample {self._name(sample)}: {key!r} is {labels!r}, not a list of label "
                                "ids") from None
            if size == 1:  # the common case, inlined: this loop runs once per streamed image
                label = labels[0]
                try:
                    weight = weight_of[label]
                except (KeyError, TypeError):
                    raise _label_error(label, self.weights, f"sample {self._name(sample)}") from None
            elif size:
                weight = self._weight(labels, f"sample {self._name(sample)}")
            else:
                self.skipped.add("no_label", self._name(sample))
                continue
            rate = weight / (mean_weight if set_means is None else set_means[sample[set_key]])
            if rate > cap:
                rate = cap
            copies = int(rate)
            if random_() < rate - copies:
                copies += 1
            if not copies:
                continue
            if size == 1:  # every copy was drawn for its one label
                sample[DRAWN_KEY] = label
                yield sample
                for _ in range(copies - 1):
                    yield dict(sample)
                continue
            for copy in range(copies):
                out = sample if copy == 0 else dict(sample)
                left = drawn_random() * weight  # h with probability n_h^(q-1) / w(I)
                for drawn in labels:
                    left -= weight_of[drawn]
                    if left < 0:
                        break
                out[DRAWN_KEY] = drawn
                yield out

    @staticmethod
    def _name(sample: Any) -> str:
        return str(sample.get("__key__", "?")) if isinstance(sample, Mapping) else repr(sample)[:80]
