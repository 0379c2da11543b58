"""pretrain/label_distribution.py: label_distribution_tv measures what the sampler controls (the drawn
hashtags against p ∝ n^q), not all labels of the sampled images, which differ from the target
whenever images carry several labels; the plot shows the three distributions."""
from __future__ import annotations

import numpy as np

from data.loader.resampling import DRAWN_KEY, LabelResampler, label_distribution, total_variation
from pretrain.label_distribution import plot_label_distribution, realised_vs_target


def resampled_counts(q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A multi-label Zipfian corpus (1-4 labels per image) through the real resampler: natural
    counts, all labels of the emitted images, the drawn hashtag of each emitted copy."""
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, 31)
    corpus = [rng.choice(30, size=rng.integers(1, 5), replace=False, p=p / p.sum()).tolist() for _ in range(400)]
    natural = np.bincount(np.concatenate(corpus), minlength=30)
    resampler = LabelResampler(natural, q=q, seed=1, num_images=len(corpus))
    carried, drawn = np.zeros(30, dtype=np.int64), np.zeros(30, dtype=np.int64)
    samples = ({"__key__": str(i), "labels": labels} for _ in range(100) for i, labels in enumerate(corpus))
    for sample in resampler(samples):
        carried[sample["labels"]] += 1
        drawn[sample[DRAWN_KEY]] += 1
    return natural, carried, drawn


def test_tv_measures_the_drawn_hashtags_against_the_target():
    """At q = 0.5 the drawn hashtags sit on the target (multinomial noise over ~40k draws, expected
    TV ~0.01) while all labels of the sampled images are far off it; the reported TV is the former."""
    natural, carried, drawn = resampled_counts(0.5)
    target = label_distribution(natural, 0.5)
    assert total_variation(drawn, target) < 0.02
    assert total_variation(carried, target) > 0.05
    assert realised_vs_target(carried, target, drawn=drawn) == total_variation(drawn, target)
    # Without the drawn counts (no resampling) it measures all labels of the delivered images.
    assert realised_vs_target(carried, target) == total_variation(carried, target)
    assert realised_vs_target(natural, label_distribution(natural, 1.0)) < 1e-12


def test_plot_draws_the_three_distributions(tmp_path):
    natural, carried, drawn = resampled_counts(0.0)
    target, name = label_distribution(natural, 0.0), "target of the drawn hashtag: p ∝ n^0"
    path = plot_label_distribution(carried, natural, target, name, tmp_path / "labels.png", drawn=drawn)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # The drawn-hashtag markers and their legend entry are in the figure: it differs from one without.
    without = plot_label_distribution(carried, natural, target, name, tmp_path / "without.png").read_bytes()
    assert data != without
