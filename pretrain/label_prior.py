"""The label prior of the training stream, where the sigmoid head's bias starts.

K independent sigmoids started at zero bias predict p = 0.5 for every hashtag, while an image
carries a few of thousands: each of the K − k absent labels has the logit gradient 0.5 on every
image. The first updates then move every head row by the same multiple of the mean pooled feature,
all logits fall along that one direction, and the gradient reaching the trunk pushes its
(non-negative) pooled features down together until many die under the ReLU, before any label is
learnt: on the demo world (K = 158) 88 % of the final features were dead, effective rank 4, and the
run's loss sat at that of a predictor knowing only the label frequencies (issue 14). Started at the
prior, the head predicts each label's frequency from the first step, and the gradient carries only
what an image says beyond it.

The prior of label h is π_h, the expected fraction of the images the loss sees that carry h; the
bias is its logit, log(π_h / (1 − π_h)), the constant logit that minimises the binary cross-entropy
of label h. The stream the loss sees is the loader's after hashtag resampling (``data.sampling``):

- natural (``q`` null): π_h = n_h / N, with n_h the images carrying h and N the images, both from
  the shard directory's info.json (``label_counts``, the shards' sample counts).
- resampled with exponent q: an image I is drawn with probability ∝ w(I) = Σ_{g∈I} n_g^(q−1)
  (data/loader/resampling.py), so π_h = Σ_{I∋h} w(I) / Σ_I w(I) = (n_h^q + Σ_{g≠h} c_gh n_g^(q−1))
  / Σ_g n_g^q, where c_gh counts the images carrying both g and h. info.json holds no co-occurrence
  counts; taking the other labels of an image to be drawn like label occurrences at large
  (c_gh ≈ n_h (k̄ − 1) n_g / Σ n, with k̄ = Σ n / N labels per image) gives

      π_h ≈ p_h + (n_h / N) (1 − 1/k̄),      p_h = n_h^q / Σ_g n_g^q,

  the drawn hashtag's target p_h (the resampler's :func:`~data.loader.resampling.label_distribution`)
  plus the labels that come along with the drawn one. It is exact with one label per image
  (π = p) and gives n_h / N at q = 1. The replication cap (``data.sampling.cap``) is left out, and
  so are a weighted mixture's set shares: its counts are the union's, as if one corpus.
- no counts (shards without info.json): every label equally likely, one per image: π_h = 1/K, the
  bias −log(K − 1). This is the same formula with n_h = 1 and N = K.

A frequency is kept half an image away from 0 and 1 (within [1/(2N), 1 − 1/(2N)]), so a label no
image carries, or one every image carries, starts at a finite bias.

The softmax has no such problem and keeps the paper's zero bias: adding one constant to every logit
changes no softmax output, and at zero bias it predicts 1/K for each hashtag, which already sums to
one label per image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data.loader.resampling import label_distribution, mean_image_weight


def stream_label_frequencies(label_counts: Sequence[int], num_images: int | None,
                             q: float | None) -> np.ndarray:
    """π_h: the expected fraction of the images the loss sees that carry label h (module docstring),
    from info.json's ``label_counts`` and ``num_images`` (the train shards' samples; None: Σ n, right
    for one label per image) and ``data.sampling.q`` (None: the natural stream)."""
    # These check the counts, q and N as the loader's resampler does (one clear line if wrong).
    labels_per_image = mean_image_weight(label_counts, 1.0, num_images)  # k̄ = Σ n / N
    counts = np.asarray(label_counts, dtype=np.float64)
    natural = counts * labels_per_image / counts.sum()  # n_h / N
    if q is None:
        return natural
    return label_distribution(label_counts, q) + natural * max(0.0, 1.0 - 1.0 / labels_per_image)


def prior_bias(label_counts: Sequence[int] | None, num_images: int | None, q: float | None,
               num_labels: int) -> np.ndarray:
    """The sigmoid head's starting bias for the stream: the logit of each label's
    :func:`stream_label_frequencies`, kept half an image away from 0 and 1 so that it is finite;
    without counts (None) every label at 1/K, the bias −log(K − 1)."""
    if label_counts is None:
        label_counts, num_images = [1] * num_labels, num_labels
    frequencies = stream_label_frequencies(label_counts, num_images, q)
    half_image = 0.5 / (num_images or float(np.sum(label_counts)))
    clipped = np.clip(frequencies, half_image, 1.0 - half_image)
    return np.log(clipped) - np.log1p(-clipped)
