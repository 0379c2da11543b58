"""Weighted mixing of shard sets: shard draws, realised image proportions, hashtag resampling over
the union, and the one-line errors (data/shards/directory.py, data/loader/order.py,
data/loader/resampling.py). Proportions are checked statistically against their binomial or
chi-square tolerance at a fixed seed; the oracle is scipy's chi-square test."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from data.errors import UserError
from data.loader.order import resampled_shards
from data.loader.pipeline import LoaderConfig, create_loader
from data.loader.resampling import (LabelResampler, label_distribution, mixture_label_distribution,
                                    set_mean_weights, union_target_weights)
from data.shards.directory import resolve_shards
from tests.shard_factory import Sample, write_shard_dir, with_vocab_sha256

# Set a: 4 shards of 4 images, set b: 2 shards of 6 images, so equal shard draws would not give
# the weights' image shares: the draw must weigh each set's shards by weight / images.
A_SIZES, B_SIZES = [4, 4, 4, 4], [6, 6]


def _set(root: Path, prefix: str, sizes: list[int], labels, num_labels: int = 3, seed: int = 0) -> Path:
    shards = [[Sample(f"{prefix}{s}_{i}", labels(i)) for i in range(n)] for s, n in enumerate(sizes)]
    return with_vocab_sha256(write_shard_dir(root / prefix, shards, num_labels, size=(24, 20), seed=seed))


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    # a: label 0 on 3 images in 4, label 1 on the rest; b: label 2 only
    return (_set(root, "a", A_SIZES, lambda i: [0 if i % 4 else 1]),
            _set(root, "b", B_SIZES, lambda i: [2], seed=1))


def test_a_mixture_is_the_union_of_its_sets(two_sets):
    a, b = two_sets
    mixed = resolve_shards([{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    assert len(mixed.urls) == 6 and mixed.num_samples == 28
    assert mixed.label_counts == (12, 4, 12)  # per-label counts summed over the sets
    assert mixed.weights == (3.0, 1.0) and [p.description for p in mixed.parts] == [f"{a} (train)", f"{b} (train)"]
    assert mixed.shard_weights() == (3 / 16,) * 4 + (1 / 12,) * 2
    assert resolve_shards([str(a / "train-000000.tar")]).parts == ()  # a list of paths stays a URL list
    single = resolve_shards([{"path": str(a), "weight": 5}])  # one set: the set itself
    assert single.urls == resolve_shards(a).urls and single.shard_weights() is None


def test_shard_draws_follow_the_per_shard_weights_chi_square(two_sets):
    """200,000 draws against the per-shard probabilities: scipy's chi-square goodness of fit must
    not reject at the 0.1% level (fixed seed), and the image share of set a is within 4 binomial
    standard errors of 3/4."""
    a, b = two_sets
    mixed = resolve_shards([{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    weights = np.array(mixed.shard_weights())
    draws = 200_000
    stream = resampled_shards(mixed.urls, seed=7, weights=weights)
    index = {url: i for i, url in enumerate(mixed.urls)}
    counts = np.bincount([index[next(stream)] for _ in range(draws)], minlength=len(mixed.urls))
    expected = draws * weights / weights.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    sizes = np.array(mixed.samples_per_shard)
    share_a = (counts[:4] * sizes[:4]).sum() / (counts * sizes).sum()
    # delta method for a ratio of per-draw image counts: Var = E[(X - rY)^2] / (n E[Y]^2)
    p = weights / weights.sum()
    residual = np.where(np.arange(6) < 4, sizes * (1 - 0.75), -sizes * 0.75)
    standard_error = math.sqrt((p * residual ** 2).sum() / draws) / (p * sizes).sum()
    assert abs(share_a - 0.75) < 4 * standard_error, (share_a, standard_error)


def _share_tolerance(weights: np.ndarray, sizes: np.ndarray, share: float, images: int) -> float:
    """4 standard errors of set a's image share when ``images`` images come from whole-shard draws
    (images of one draw come from one set, so the draws, not the images, are the trials)."""
    p = weights / weights.sum()
    per_draw = (p * sizes).sum()
    draws = images / per_draw
    residual = np.where(np.arange(len(sizes)) < 4, sizes * (1 - share), -sizes * share)
    return 4 * math.sqrt((p * residual ** 2).sum() / draws) / per_draw


@pytest.mark.parametrize("sampling_q", [None, 0.0])
def test_the_loader_delivers_each_set_in_proportion_to_its_weight(two_sets, sampling_q):
    """2,400 images from 2 workers, weights 3:1: set a's share of the delivered images is within 4
    standard errors of 0.75 (whole-shard draws: one standard error is 0.021, so the tolerance is
    0.083), with hashtag resampling off and on (q=0 normalises each set by its own mean weight, so
    it keeps the set proportions). With q=0 the label shares within set a flatten from 3:1 to 1:1,
    as the union's counts ask: every label's share within the same tolerance of
    mixture_label_distribution's target (0.375, 0.375, 0.25); label 2's share is set b's."""
    a, b = two_sets
    config = LoaderConfig(batch_size=16, num_workers=2, image_size=8, epoch_images=2400, shuffle_buffer=64,
                          shuffle_initial=16, sampling_q=sampling_q)
    mix = [{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}]
    loader = create_loader(mix, config)
    keys = [key for batch in loader for key in batch["keys"]]
    assert len(keys) == 2400 and loader.skip_counts() == {}
    share_a = sum(key.startswith("a") for key in keys) / len(keys)
    mixed = resolve_shards(mix)
    tolerance = _share_tolerance(np.array(mixed.shard_weights()), np.array(mixed.samples_per_shard), 0.75, 2400)
    assert abs(share_a - 0.75) < tolerance, (share_a, tolerance)
    counts = loader.realised_label_counts()
    if sampling_q is None:
        assert abs(counts[1] / (counts[0] + counts[1]) - 0.25) < 0.06, counts  # natural within set a
    else:
        target = mixture_label_distribution([p.label_counts for p in mixed.parts], [3, 1], 0.0)
        np.testing.assert_allclose(target, [0.375, 0.375, 0.25])
        np.testing.assert_allclose(counts / counts.sum(), target, atol=tolerance)


def test_resampling_keeps_each_sets_emission_rate_at_one(two_sets):
    """Each set's images fed 20 times over (q=0, the union's counts): every set emits one sample per
    input in expectation, so resampling leaves the mix alone. An emitted count is a sum of
    independent draws of variance <= 1/4 each, so 4 standard errors are 2 / sqrt(inputs) relative
    (<= 0.11 for set b's 240 inputs); dividing by the union's mean weight instead would put set a
    at 1.17 and set b at 0.78."""
    a, b = two_sets
    mixed = resolve_shards([{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    means = set_mean_weights([p.label_counts for p in mixed.parts], [p.num_samples for p in mixed.parts], 0.0)
    url_means = {url: float(m) for part, m in zip(mixed.parts, means) for url in part.urls}
    resampler = LabelResampler(mixed.label_counts, q=0.0, seed=3, num_images=mixed.num_samples, set_means=url_means)
    inputs = {"a": [{"__url__": mixed.parts[0].urls[0], "labels": [0 if i % 4 else 1], "set": "a"} for i in range(16)],
              "b": [{"__url__": mixed.parts[1].urls[0], "labels": [2], "set": "b"} for _ in range(12)]}
    stream = [dict(sample) for _ in range(20) for samples in inputs.values() for sample in samples]
    emitted = {"a": 0, "b": 0}
    for sample in resampler(stream):
        emitted[sample["set"]] += 1
    for name, samples in inputs.items():
        fed = 20 * len(samples)
        assert abs(emitted[name] / fed - 1) < 2 / math.sqrt(fed), (name, emitted[name], fed)


def test_union_target_weights_reproduce_single_corpus_resampling():
    """With π_i ∝ Z_i the mixture's label target is p_h ∝ n_h^q of the union (the identity in
    data/loader/resampling.py), and each set's mean weight times its images is its Z_i."""
    sets = [[50, 10, 0, 3], [5, 0, 40, 7]]
    images = [60, 52]
    union = np.sum(sets, axis=0)
    for q in (0.0, 0.5, 1.0):
        weights = union_target_weights(sets, images, q)
        np.testing.assert_allclose(mixture_label_distribution(sets, weights, q), label_distribution(union, q))
        masses = np.array([sum(n * m ** (q - 1) for n, m in zip(counts, union) if n) for counts in sets])
        np.testing.assert_allclose(set_mean_weights(sets, images, q) * images, masses)
    np.testing.assert_allclose(union_target_weights(sets, images, None), [60 / 112, 52 / 112])


def test_eval_over_a_mixture_reads_every_sample_once(two_sets):
    a, b = two_sets
    loader = create_loader([{"path": str(a), "weight": 3}, {"path": str(b)}],
                           LoaderConfig(batch_size=4, num_workers=2, image_size=8, split="train"), mode="eval")
    keys = [key for batch in loader for key in batch["keys"]]
    assert sorted(keys) == sorted([f"a{s}_{i}" for s in range(4) for i in range(4)]
                                  + [f"b{s}_{i}" for s in range(2) for i in range(6)])


def test_mixture_errors_are_one_line_naming_the_sets(two_sets, tmp_path):
    a, b = two_sets
    other = with_vocab_sha256(write_shard_dir(tmp_path / "other", [[Sample("o_0", [0])]], 3), "cd" * 32)
    with pytest.raises(UserError, match=f"{a} \\(train\\) and {other} \\(train\\) were built with different "
                                        "vocabularies") as err:
        resolve_shards([{"path": str(a)}, {"path": str(other)}])
    assert "\n" not in str(err.value)
    unsigned = write_shard_dir(tmp_path / "unsigned", [[Sample("u_0", [0])]], 3)
    with pytest.raises(UserError, match=f"{unsigned} \\(train\\): its info.json records no vocabulary sha256"):
        resolve_shards([{"path": str(a)}, {"path": str(unsigned)}])
    for weight in (0, -1, float("inf"), float("nan"), True, "3"):
        with pytest.raises(UserError, match=f"shard set 1 \\({b}\\) has weight .*positive finite"):
            resolve_shards([{"path": str(a)}, {"path": str(b), "weight": weight}])
    with pytest.raises(UserError, match=f"shard set 1 \\({tmp_path / 'nope'}\\) is not a directory"):
        resolve_shards([{"path": str(a)}, {"path": str(tmp_path / "nope")}])
    with pytest.raises(UserError, match="is listed twice"):
        resolve_shards([{"path": str(a)}, {"path": str(a) + "/"}])
    with pytest.raises(UserError, match="unknown key 'wieght'"):
        resolve_shards([{"path": str(a), "wieght": 2}])
    with pytest.raises(UserError, match=f"{a / 'info.json'} lists no val shards"):
        resolve_shards([{"path": str(a)}, {"path": str(b)}], "val")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(UserError, match="has no info.json: weighted mixing needs"):
        resolve_shards([{"path": str(a)}, {"path": str(bare)}])
